// One random placement sequence, run on a lease store and on the reference
// model (reference-model.ts) side by side; placement.property.test.ts runs
// many of them against each store. Steps: worker registrations and attaches
// (reconnects replace the session), detaches, heartbeats (also from stale
// sessions), staleness, enable/disable/drain with capacity and label
// changes, deletions, submissions with random pools, required labels, runs
// and exclusivity, finishes (and finishing twice), a second acquire of a held
// lease, reaping, and idempotent restores.
//
// After every step the store must agree with the model exactly: every
// acquire's answer (worker, tie-break, counts) equals chooseWorker's on the
// model's snapshot and breaks none of the rules the model checks on its own;
// every worker's attachment, session, replica, freshness and active leases;
// every lease. Jobs the store turns away wait in a queue ordered as the
// placer's is (creation order; a requeued attempt goes back to its job's
// place) that is retried, in order, after every step that may have made
// room; no queued job may wait while the reference has an eligible worker
// with room for it. At the end every lease is released and every worker must
// be back to 0 active leases.

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import {
  LeaseHeldError,
  type AcquireRequest,
  type AcquireResult,
  type LeaseStore,
  type PlacementWorker,
} from "../../src/stores/lease-store.ts";
import { createRandom, type Random } from "./random.ts";
import { createReferenceModel, leaseKey } from "./reference-model.ts";

const STEPS = 100;
const LABELS = ["linux", "gpu", "arm"] as const;
const REPLICAS = ["replica-a", "replica-b"] as const;
/** Share of sequences that start with a crowd of extra workers (Redis: past the labeled walk's budget). */
const CROWD_CHANCE = 0.1;
const CROWD_SIZE = 72;
const TRACE_LINES = 30;

export interface Subject {
  name: string;
  store: LeaseStore;
  /** The memory store's fake clock; null for Redis, whose clock a test cannot move. */
  clock: { value: number } | null;
  heartbeatTtlMs: number;
  leaseTtlMs: number;
  /** Prefix of every id the sequence uses (Redis sequences share one key prefix). */
  namespace: string;
}

interface QueuedJob {
  jobId: string;
  attempt: number;
  /** Creation order: a requeued job goes back to its place, as the placer's queue (priority, created_at). */
  order: number;
  request: Omit<AcquireRequest, "attempt">;
}

function describeRequest(r: Omit<AcquireRequest, "attempt">): string {
  const parts = [r.poolId.replace(/^.*-/, "")];
  if (r.requiredLabels.length > 0) parts.push(`labels=${r.requiredLabels.join("+")}`);
  if (r.runId !== "") parts.push(`run=${r.runId.replace(/^.*-/, "")}`);
  if (r.exclusive) parts.push("exclusive");
  return parts.join(" ");
}

function randomLabels(random: Random): string[] {
  const labels: string[] = [];
  if (random.chance(0.5)) labels.push("linux");
  if (random.chance(0.3)) labels.push("gpu");
  if (random.chance(0.3)) labels.push("arm");
  return labels;
}

function requiredLabels(random: Random): string[] {
  const roll = random.next();
  if (roll < 0.55) return [];
  if (roll < 0.9) return [random.pick(LABELS)];
  const first = random.pick(LABELS);
  const second = random.pick(LABELS.filter((l) => l !== first));
  return [first, second];
}

/** One random sequence of STEPS steps; throws with the seed and the last steps on the first disagreement. */
export async function runSequence(seed: number, subject: Subject): Promise<void> {
  const random = createRandom(seed);
  const { store, clock } = subject;
  const ns = subject.namespace;
  const model = createReferenceModel({ now: clock?.value ?? 0, heartbeatTtlMs: subject.heartbeatTtlMs });
  const trace: string[] = [];
  const note = (line: string) => trace.push(line);

  const pools = [`${ns}p0`, `${ns}p1`];
  const workerCount = random.between(2, 7);
  const workerIds = Array.from({ length: workerCount }, (_, i) => `${ns}w${i}`);
  const homePool = new Map(workerIds.map((id) => [id, random.chance(0.75) ? pools[0] : pools[1]]));
  const sessions = new Map<string, string[]>();
  const runIds = ["", "", "", `${ns}r1`, `${ns}r2`, `${ns}r3`];
  let sessionCounter = 0;
  let jobCounter = 0;
  const queue: QueuedJob[] = [];
  /** Deleted workers: never attached again (worker ids are not reused), still asked about. */
  const removedIds: string[] = [];
  /** Finished (released) attempts, for "release twice" steps. */
  const finished: { jobId: string; attempt: number }[] = [];
  const requests = new Map<string, Omit<AcquireRequest, "attempt">>();
  const jobOrder = new Map<string, number>();

  const newSession = (workerId: string) => {
    const sessionId = `${ns}s${++sessionCounter}`;
    const list = sessions.get(workerId) ?? [];
    list.push(sessionId);
    sessions.set(workerId, list);
    return sessionId;
  };

  const freshPlacement = (workerId: string): PlacementWorker => ({
    workerId,
    poolId: homePool.get(workerId)!,
    capacity: random.between(1, 3),
    labels: randomLabels(random),
    acceptsWork: random.chance(0.85),
  });

  /** Moves the memory store's clock (and the model's), never onto an exact heartbeat-TTL boundary. */
  const advanceClock = (ms: number) => {
    if (clock === null) return;
    let to = clock.value + ms;
    const onBoundary = (t: number) =>
      [...model.workers.values()].some((w) => w.heartbeatAtMs !== null && t - w.heartbeatAtMs === model.heartbeatTtlMs);
    while (onBoundary(to)) to++;
    clock.value = to;
    model.now = to;
  };

  const attach = async (placement: PlacementWorker) => {
    const sessionId = newSession(placement.workerId);
    const replicaId = random.pick(REPLICAS);
    await store.attach(placement, sessionId, replicaId, subject.heartbeatTtlMs);
    model.attach(placement, sessionId, replicaId);
    return sessionId;
  };

  /**
   * The store's answer to one acquire must be the model's; on a placement the
   * model records the lease. `answer` is the store's reply, already requested.
   */
  const checkPlacement = (job: QueuedJob, answer: AcquireResult): boolean => {
    const request: AcquireRequest = { ...job.request, attempt: job.attempt };
    const what = `acquire ${job.jobId}#${job.attempt} (${describeRequest(job.request)})`;
    const broken = model.ruleBroken(request, answer);
    assert.equal(broken, null, `${what}: ${broken}`);
    assert.deepEqual(answer, model.expect(request), what);
    if (!answer.ok) return false;
    model.recordLease(request, answer);
    const worker = model.workers.get(answer.workerId)!;
    assert.ok(
      worker.leases.size <= worker.placement.capacity,
      `${answer.workerId} over capacity: ${worker.leases.size} > ${worker.placement.capacity}`,
    );
    if (request.exclusive) assert.equal(worker.leases.size, 1, `exclusive lease shares ${answer.workerId}`);
    note(`    placed ${job.jobId}#${job.attempt} on ${answer.workerId} (${answer.tieBreak}, before ${answer.leasesBefore})`);
    return true;
  };

  /**
   * Retries queued jobs in order; none may stay queued while the reference
   * has an eligible worker with room for it. The acquires are sent at once:
   * both stores carry them out in the order they were called (Redis runs the
   * scripts of one connection in order), so checking the replies one by one
   * against the model is the same as awaiting each before the next, in one
   * round trip instead of one per queued job.
   */
  const drainQueue = async () => {
    const jobs = [...queue];
    const answers = jobs.map((job) =>
      store.acquire({ ...job.request, attempt: job.attempt }).then(
        (result) => ({ result }),
        (error: unknown) => ({ error }),
      ),
    );
    for (const [i, job] of jobs.entries()) {
      const answer = await answers[i];
      if ("error" in answer) throw answer.error;
      if (checkPlacement(job, answer.result)) queue.splice(queue.indexOf(job), 1);
    }
    for (const job of queue) {
      const choice = model.expect({ ...job.request, attempt: job.attempt });
      assert.ok(
        !choice.ok,
        `${job.jobId} waits in the queue while ${choice.ok ? choice.workerId : ""} is eligible and has room`,
      );
    }
  };

  /** The placer's requeue of lost attempts: the next attempt, back at the job's place in the queue. */
  const requeue = (lost: { jobId: string; attempt: number }[]) => {
    for (const { jobId, attempt } of lost) {
      enqueue({ jobId, attempt: attempt + 1, order: jobOrder.get(jobId)!, request: requests.get(jobId)! });
    }
  };

  const enqueue = (job: QueuedJob) => {
    let at = queue.findIndex((queued) => queued.order > job.order);
    if (at < 0) at = queue.length;
    queue.splice(at, 0, job);
  };

  const checkState = async () => {
    const ids = [...model.workers.keys(), ...removedIds];
    const leases = [...model.leases.values()];
    const sample = clock === null ? leases.slice(0, 3) : leases;
    // One round trip: the status and the lease reads go out together.
    const [statuses, ...held] = await Promise.all([
      store.workerStatus(ids),
      ...sample.map((lease) => store.lease(lease.jobId, lease.attempt)),
    ]);
    for (const id of ids) {
      const status = statuses.get(id)!;
      const got = {
        attached: status.attached,
        sessionId: status.sessionId,
        replicaId: status.replicaId,
        fresh: status.fresh,
        activeLeases: status.activeLeases,
      };
      assert.deepEqual(got, model.status(id), `workerStatus of ${id}`);
      const worker = model.workers.get(id);
      if (worker === undefined) continue;
      if (clock !== null) assert.equal(status.lastHeartbeatMs, worker.heartbeatAtMs, `heartbeat of ${id}`);
      if (worker.exclusiveLease !== null) assert.equal(worker.leases.size, 1, `${id} holds an exclusive lease and others`);
    }
    for (const [i, lease] of sample.entries()) {
      const want = model.isExpired(lease) ? null : { jobId: lease.jobId, attempt: lease.attempt, workerId: lease.workerId };
      assert.deepEqual(held[i], want, `lease ${lease.key}`);
    }
  };

  const attachedWorkers = () => [...model.workers.entries()].filter(([, w]) => w.sessionId !== null).map(([id]) => id);

  const steps: Record<string, () => Promise<void>> = {
    async attach() {
      if (workerIds.length === 0 || random.chance(0.05)) {
        // A worker registers.
        const workerId = `${ns}w${workerIds.length + removedIds.length}`;
        workerIds.push(workerId);
        homePool.set(workerId, random.chance(0.75) ? pools[0] : pools[1]);
      }
      const workerId = random.pick(workerIds);
      const known = model.workers.get(workerId);
      const placement = known === undefined || random.chance(0.3) ? freshPlacement(workerId) : known.placement;
      const sessionId = await attach(placement);
      note(
        `attach ${workerId} ${sessionId} cap=${placement.capacity} labels=${placement.labels.join("+") || "-"}` +
          `${placement.acceptsWork ? "" : " disabled"}${known?.sessionId ? ` (replaces ${known.sessionId})` : ""}`,
      );
      await drainQueue();
    },
    async detach() {
      const attached = attachedWorkers();
      if (attached.length === 0) return;
      const workerId = random.pick(attached);
      const stale = random.chance(0.15);
      const sessionId = stale ? random.pick(sessions.get(workerId)!) : model.workers.get(workerId)!.sessionId!;
      const want = model.detach(workerId, sessionId);
      note(`detach ${workerId} ${sessionId} -> ${want}`);
      assert.equal(await store.detach(workerId, sessionId), want, `detach ${workerId} ${sessionId}`);
    },
    async heartbeat() {
      if (model.workers.size === 0) return;
      const workerId = random.pick([...model.workers.keys()]);
      const current = model.workers.get(workerId)!.sessionId;
      const past = sessions.get(workerId) ?? [`${ns}never-attached`];
      const sessionId = current !== null && random.chance(0.85) ? current : random.pick(past);
      const want = model.heartbeat(workerId, sessionId, subject.leaseTtlMs);
      note(`heartbeat ${workerId} ${sessionId} -> ${want}`);
      assert.equal(
        await store.heartbeat(workerId, sessionId, subject.heartbeatTtlMs, subject.leaseTtlMs),
        want,
        `heartbeat ${workerId} ${sessionId}`,
      );
      await drainQueue();
    },
    async heartbeatAll() {
      note("heartbeat every attached worker");
      const beats = attachedWorkers().map((workerId) => {
        const sessionId = model.workers.get(workerId)!.sessionId!;
        model.heartbeat(workerId, sessionId, subject.leaseTtlMs);
        return store.heartbeat(workerId, sessionId, subject.heartbeatTtlMs, subject.leaseTtlMs);
      });
      assert.ok((await Promise.all(beats)).every(Boolean), "every attached worker's heartbeat is accepted");
      await drainQueue();
    },
    async stale() {
      if (clock !== null) {
        const ms = random.between(subject.heartbeatTtlMs / 2, subject.heartbeatTtlMs * 1.5);
        advanceClock(ms);
        note(`clock +${ms} ms -> ${clock.value}`);
        return;
      }
      const attached = attachedWorkers();
      if (attached.length === 0) return;
      const workerId = random.pick(attached);
      const sessionId = model.workers.get(workerId)!.sessionId!;
      note(`stale ${workerId} (heartbeat with a 1 ms TTL)`);
      assert.equal(await store.heartbeat(workerId, sessionId, 1, subject.leaseTtlMs), true);
      model.heartbeat(workerId, sessionId, subject.leaseTtlMs);
      model.markStale(workerId);
      for (let waited = 0; (await store.workerStatus([workerId])).get(workerId)!.fresh; waited++) {
        assert.ok(waited < 100, `${workerId} still fresh 1 ms after a heartbeat with a 1 ms TTL`);
        await sleep(1);
      }
    },
    async tick() {
      const ms = random.between(1, 1500);
      advanceClock(ms);
      if (clock !== null) note(`clock +${ms} ms -> ${clock.value}`);
    },
    async update() {
      if (workerIds.length === 0) return;
      const workerId = random.pick(workerIds);
      const before = model.workers.get(workerId)?.placement ?? freshPlacement(workerId);
      const action = random.pick(["enable", "disable", "drain"] as const);
      const placement: PlacementWorker = {
        ...before,
        labels: random.chance(0.15) ? randomLabels(random) : before.labels,
        capacity: random.chance(0.2) ? random.between(1, 3) : before.capacity,
        acceptsWork: action === "enable",
      };
      note(`${action} ${workerId} cap=${placement.capacity} labels=${placement.labels.join("+") || "-"}`);
      await store.updateWorker(placement);
      model.updateWorker(placement);
      await drainQueue();
    },
    async submit() {
      const jobId = `${ns}j${++jobCounter}`;
      const request = {
        poolId: random.chance(0.75) ? pools[0] : pools[1],
        jobId,
        runId: random.pick(runIds),
        requiredLabels: requiredLabels(random),
        exclusive: random.chance(0.15),
        leaseTtlMs: subject.leaseTtlMs,
      };
      requests.set(jobId, request);
      jobOrder.set(jobId, jobCounter);
      note(`submit ${jobId} (${describeRequest(request)})`);
      enqueue({ jobId, attempt: 1, order: jobCounter, request });
      await drainQueue();
    },
    async finish() {
      if (finished.length > 0 && random.chance(0.1)) {
        const { jobId, attempt } = random.pick(finished);
        note(`finish ${jobId}#${attempt} again`);
        assert.equal(await store.release(jobId, attempt), false, `second release of ${jobId}#${attempt}`);
        return;
      }
      if (model.leases.size === 0) return;
      const lease = random.pick([...model.leases.values()]);
      note(`finish ${lease.jobId}#${lease.attempt} on ${lease.workerId}${model.isExpired(lease) ? " (expired)" : ""}`);
      assert.equal(await store.release(lease.jobId, lease.attempt), true, `release ${lease.key}`);
      model.release(lease.jobId, lease.attempt);
      finished.push({ jobId: lease.jobId, attempt: lease.attempt });
      await drainQueue();
    },
    async duplicate() {
      if (model.leases.size === 0) return;
      const lease = random.pick([...model.leases.values()]);
      note(`acquire ${lease.key} again (held)`);
      const request = { ...requests.get(lease.jobId)!, attempt: lease.attempt };
      await assert.rejects(store.acquire(request), LeaseHeldError, `second acquire of ${lease.key}`);
    },
    async reap() {
      const want = model.reap();
      const got = await store.reapExpiredLeases();
      note(`reap -> ${want.map((l) => l.key).join(", ") || "nothing"}`);
      const key = (l: { jobId: string; attempt: number; workerId: string }) => `${leaseKey(l.jobId, l.attempt)}@${l.workerId}`;
      assert.deepEqual(got.map(key).sort(), want.map(key).sort(), "reaped leases");
      requeue(want);
      await drainQueue();
    },
    async remove() {
      const known = workerIds.filter((id) => model.workers.has(id));
      if (known.length === 0) return;
      const workerId = random.pick(known);
      const dropped = model.removeWorker(workerId);
      note(`delete ${workerId} with ${dropped.map((l) => l.key).join(", ") || "no leases"}`);
      await store.removeWorker(workerId);
      workerIds.splice(workerIds.indexOf(workerId), 1);
      removedIds.push(workerId);
      for (const lease of dropped) {
        assert.equal(await store.lease(lease.jobId, lease.attempt), null, `${lease.key} after deleting ${workerId}`);
      }
      finished.push(...dropped);
      requeue(dropped);
      await drainQueue();
    },
    async restore() {
      if (model.leases.size === 0) return;
      const lease = random.pick([...model.leases.values()]);
      note(`restore ${lease.key} on ${lease.workerId} (same worker)`);
      await store.restoreLease({ jobId: lease.jobId, attempt: lease.attempt, workerId: lease.workerId }, subject.leaseTtlMs);
      model.restoreSame(lease.jobId, lease.attempt, subject.leaseTtlMs);
    },
  };

  const weights = {
    submit: 30,
    finish: 20,
    attach: 8,
    detach: 4,
    heartbeat: 5,
    heartbeatAll: 6,
    stale: 5,
    tick: clock === null ? 0 : 6,
    update: 7,
    duplicate: 2,
    reap: 3,
    restore: 1,
    remove: 1,
  };

  let step = -1;
  try {
    if (random.chance(CROWD_CHANCE)) {
      // Many workers, few of them labeled: labeled requests walk past the Redis script's budget.
      note(`crowd of ${CROWD_SIZE} workers in p0`);
      for (let i = 0; i < CROWD_SIZE; i++) {
        const workerId = `${ns}c${i}`;
        workerIds.push(workerId);
        homePool.set(workerId, pools[0]);
        await attach({
          workerId,
          poolId: pools[0],
          capacity: random.between(1, 2),
          labels: random.chance(0.06) ? ["gpu"] : random.chance(0.1) ? ["linux"] : [],
          acceptsWork: true,
        });
      }
    }
    for (step = 0; step < STEPS; step++) {
      const name = random.weighted(weights);
      await steps[name]();
      await checkState();
    }

    // Nothing leaks: with the queue abandoned and every lease released, every worker is back to 0.
    step = STEPS;
    note(`end: cancel ${queue.length} queued jobs, release ${model.leases.size} leases`);
    queue.length = 0;
    for (const lease of [...model.leases.values()]) {
      assert.equal(await store.release(lease.jobId, lease.attempt), true, `final release of ${lease.key}`);
      model.release(lease.jobId, lease.attempt);
      assert.equal(await store.lease(lease.jobId, lease.attempt), null, `${lease.key} after its release`);
    }
    await checkState();
    const ids = [...model.workers.keys()];
    const statuses = await store.workerStatus(ids);
    for (const id of ids) assert.equal(statuses.get(id)!.activeLeases, 0, `${id} leases after releasing everything`);
    assert.deepEqual(await store.reapExpiredLeases(), [], "nothing left to reap");
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(
      `${subject.name}: sequence seed ${seed} failed at step ${step}: ${message}\n` +
        `replay: MUSTER_PROPERTY_SEED=${seed} node_modules/.bin/node --test test/property/placement.property.test.ts\n` +
        `last steps:\n  ${trace.slice(-TRACE_LINES).join("\n  ")}`,
      { cause: error },
    );
  }
}
