// The reference model for the placement property test
// (placement.property.test.ts): a plain, obviously-correct copy of the
// lease/health state a store keeps. The expected choice comes from chooseWorker (src/core/choose-worker.ts), the
// pure reference of DESIGN "Choosing the worker", run on a snapshot of the
// model (`expect`); `ruleBroken` checks the same rules one by one without it,
// so a mistake shared by chooseWorker and a store still shows.
//
// What the model remembers, and why:
// - Run affinity: only the LAST worker that served each run. Both stores keep
//   one worker per run (Redis: `run:<runId>` holds a single worker id; memory:
//   the same), so a worker that served a run earlier but not last no longer
//   wins a tie for it. chooseWorker accepts any set of served runs; the model
//   feeds it exactly that one worker.
// - Freshness: the model keeps one heartbeat TTL for every worker and judges
//   it the way chooseWorker does (`now - lastHeartbeat <= ttl`). The property
//   test never lets the clock rest on the exact TTL boundary, where the
//   stores differ from chooseWorker (see the boundary test in the suite).
// - Lease expiry follows the store contract: a lease is expired once
//   `expiresAt <= now`; an expired lease still counts against its worker's
//   capacity until it is reaped or released.
//
// All state is owned by the model object; the test mutates it only through
// the methods below, after the store under test did the same thing.

import { chooseWorker, type Choice, type ChoiceRequest, type WorkerSnapshot } from "../../src/core/choose-worker.ts";
import type { AcquireRequest, PlacementWorker } from "../../src/stores/lease-store.ts";

export interface ModelWorker {
  placement: PlacementWorker;
  sessionId: string | null;
  replicaId: string | null;
  heartbeatAtMs: number | null;
  /** Lease keys ("<jobId>:<attempt>"), expired-but-unreaped ones included. */
  leases: Set<string>;
  exclusiveLease: string | null;
  /** Order of the worker's last lease; 0: never leased. */
  lastLeasedSeq: number;
}

export interface ModelLease {
  key: string;
  jobId: string;
  attempt: number;
  workerId: string;
  exclusive: boolean;
  expiresAtMs: number;
}

export interface ModelStatus {
  attached: boolean;
  sessionId: string | null;
  replicaId: string | null;
  fresh: boolean;
  activeLeases: number;
}

export function leaseKey(jobId: string, attempt: number): string {
  return `${jobId}:${attempt}`;
}

export interface ReferenceModel {
  /** The model's clock (ms); the test keeps it equal to the store's where it can. */
  now: number;
  readonly heartbeatTtlMs: number;
  readonly workers: ReadonlyMap<string, ModelWorker>;
  readonly leases: ReadonlyMap<string, ModelLease>;
  attach(worker: PlacementWorker, sessionId: string, replicaId: string): void;
  detach(workerId: string, sessionId: string): boolean;
  heartbeat(workerId: string, sessionId: string, leaseTtlMs: number): boolean;
  /** The worker's heartbeat is older than the TTL (a store we cannot fake the clock of). */
  markStale(workerId: string): void;
  /** Creates the worker, unattached, if the model does not know it yet. */
  updateWorker(worker: PlacementWorker): void;
  /** Forgets the worker and its leases (deleted); returns the leases it held. */
  removeWorker(workerId: string): ModelLease[];
  /** What the store must answer to `request` now: chooseWorker on the model's snapshot. */
  expect(request: AcquireRequest): Choice;
  /**
   * The rules of DESIGN "Choosing the worker", step 2, checked one by one on
   * the model without chooseWorker, so a mistake in chooseWorker cannot hide
   * the same mistake in a store. Returns the first rule `choice` breaks, or null.
   */
  ruleBroken(request: AcquireRequest, choice: Choice): string | null;
  /** Records the lease that `choice` (a successful expect) says the store took. */
  recordLease(request: AcquireRequest, choice: Extract<Choice, { ok: true }>): void;
  release(jobId: string, attempt: number): boolean;
  isExpired(lease: ModelLease): boolean;
  /** Removes and returns the expired leases, as reapExpiredLeases does. */
  reap(): ModelLease[];
  /** Re-creates an existing lease on the same worker: only its expiry moves. */
  restoreSame(jobId: string, attempt: number, leaseTtlMs: number): void;
  status(workerId: string): ModelStatus;
  isFresh(worker: ModelWorker): boolean;
  /** The run's last worker, or undefined. */
  lastWorkerOfRun(runId: string): string | undefined;
}

export function createReferenceModel(options: { now: number; heartbeatTtlMs: number }): ReferenceModel {
  const workers = new Map<string, ModelWorker>();
  const leases = new Map<string, ModelLease>();
  const runs = new Map<string, string>();
  let leaseSeq = 0;

  const model: ReferenceModel = {
    now: options.now,
    heartbeatTtlMs: options.heartbeatTtlMs,
    workers,
    leases,

    attach(worker, sessionId, replicaId) {
      const existing = workers.get(worker.workerId);
      workers.set(worker.workerId, {
        placement: { ...worker, labels: [...worker.labels] },
        sessionId,
        replicaId,
        heartbeatAtMs: model.now,
        leases: existing?.leases ?? new Set(),
        exclusiveLease: existing?.exclusiveLease ?? null,
        lastLeasedSeq: existing?.lastLeasedSeq ?? 0,
      });
    },

    detach(workerId, sessionId) {
      const worker = workers.get(workerId);
      if (worker === undefined || worker.sessionId !== sessionId) return false;
      worker.sessionId = null;
      worker.replicaId = null;
      return true;
    },

    heartbeat(workerId, sessionId, leaseTtlMs) {
      const worker = workers.get(workerId);
      if (worker === undefined || worker.sessionId !== sessionId) return false;
      worker.heartbeatAtMs = model.now;
      for (const key of worker.leases) {
        const lease = leases.get(key)!;
        if (!model.isExpired(lease)) lease.expiresAtMs = model.now + leaseTtlMs;
      }
      return true;
    },

    markStale(workerId) {
      workers.get(workerId)!.heartbeatAtMs = model.now - model.heartbeatTtlMs - 1;
    },

    updateWorker(worker) {
      const placement = { ...worker, labels: [...worker.labels] };
      const existing = workers.get(worker.workerId);
      if (existing !== undefined) {
        existing.placement = placement;
        return;
      }
      // Registered but never connected (disabled before its agent came up).
      workers.set(worker.workerId, {
        placement,
        sessionId: null,
        replicaId: null,
        heartbeatAtMs: null,
        leases: new Set(),
        exclusiveLease: null,
        lastLeasedSeq: 0,
      });
    },

    removeWorker(workerId) {
      const worker = workers.get(workerId);
      if (worker === undefined) return [];
      const dropped = [...worker.leases].map((key) => leases.get(key)!);
      for (const lease of dropped) leases.delete(lease.key);
      workers.delete(workerId);
      return dropped;
    },

    expect(request) {
      const snapshot: WorkerSnapshot[] = [];
      const lastOfRun = model.lastWorkerOfRun(request.runId);
      for (const [workerId, worker] of workers) {
        if (worker.placement.poolId !== request.poolId) continue;
        snapshot.push({
          workerId,
          attached: worker.sessionId !== null,
          lastHeartbeatMs: worker.heartbeatAtMs,
          acceptsWork: worker.placement.acceptsWork,
          labels: worker.placement.labels,
          capacity: worker.placement.capacity,
          activeLeases: worker.leases.size,
          holdsExclusive: worker.exclusiveLease !== null,
          lastLeasedSeq: worker.lastLeasedSeq,
          servedRuns: new Set(lastOfRun === workerId ? [request.runId] : []),
        });
      }
      const choiceRequest: ChoiceRequest = {
        runId: request.runId,
        requiredLabels: request.requiredLabels,
        exclusive: request.exclusive,
      };
      return chooseWorker(snapshot, choiceRequest, model.now, model.heartbeatTtlMs);
    },

    ruleBroken(request, choice) {
      const inPool = [...workers.entries()].filter(([, w]) => w.placement.poolId === request.poolId);
      const healthy = inPool.filter(([, w]) => w.placement.acceptsWork && model.isFresh(w));
      const matching = healthy.filter(([, w]) => request.requiredLabels.every((l) => w.placement.labels.includes(l)));
      const eligible = matching.filter(
        ([, w]) =>
          w.exclusiveLease === null &&
          w.leases.size < w.placement.capacity &&
          (!request.exclusive || w.leases.size === 0),
      );
      if (eligible.length === 0) {
        if (choice.ok) return `placed on ${choice.workerId} although no worker is eligible`;
        const code = matching.length === 0 ? "no_healthy_worker" : "all_busy";
        if (choice.code !== code) return `answered ${choice.code}, the rules say ${code}`;
        if (choice.healthy !== healthy.length || choice.matching !== matching.length) {
          return `counted ${choice.healthy} healthy / ${choice.matching} matching, the rules count ${healthy.length} / ${matching.length}`;
        }
        return null;
      }
      if (!choice.ok) return `answered ${choice.code} although ${eligible.map(([id]) => id).join(", ")} are eligible`;
      const chosen = eligible.find(([id]) => id === choice.workerId);
      if (chosen === undefined) return `chose ${choice.workerId}, which is not eligible (healthy, labels, room)`;
      const fewest = Math.min(...eligible.map(([, w]) => w.leases.size));
      if (chosen[1].leases.size !== fewest) return `chose ${choice.workerId} with ${chosen[1].leases.size} leases; another eligible has ${fewest}`;
      if (choice.leasesBefore !== fewest) return `reported ${choice.leasesBefore} leases before, it had ${fewest}`;
      if (choice.eligible !== eligible.length) return `reported ${choice.eligible} eligible, the rules count ${eligible.length}`;
      const tied = eligible.filter(([, w]) => w.leases.size === fewest);
      if (tied.length === 1) return choice.tieBreak === "fewest_leases" ? null : `tie-break ${choice.tieBreak} without a tie`;
      const lastOfRun = model.lastWorkerOfRun(request.runId);
      if (tied.some(([id]) => id === lastOfRun)) {
        if (choice.workerId !== lastOfRun || choice.tieBreak !== "same_run") {
          return `tie among ${tied.length}: ${lastOfRun} served run ${request.runId} last, chose ${choice.workerId} (${choice.tieBreak})`;
        }
        return null;
      }
      const [leastRecent] = tied.sort(([a, x], [b, y]) => x.lastLeasedSeq - y.lastLeasedSeq || (a < b ? -1 : 1));
      if (choice.workerId !== leastRecent[0] || choice.tieBreak !== "least_recently_leased") {
        return `tie among ${tied.length}: ${leastRecent[0]} is least recently leased, chose ${choice.workerId} (${choice.tieBreak})`;
      }
      return null;
    },

    recordLease(request, choice) {
      const key = leaseKey(request.jobId, request.attempt);
      const worker = workers.get(choice.workerId)!;
      leases.set(key, {
        key,
        jobId: request.jobId,
        attempt: request.attempt,
        workerId: choice.workerId,
        exclusive: request.exclusive,
        expiresAtMs: model.now + request.leaseTtlMs,
      });
      worker.leases.add(key);
      if (request.exclusive) worker.exclusiveLease = key;
      worker.lastLeasedSeq = ++leaseSeq;
      if (request.runId !== "") runs.set(request.runId, choice.workerId);
    },

    release(jobId, attempt) {
      const key = leaseKey(jobId, attempt);
      const lease = leases.get(key);
      if (lease === undefined) return false;
      leases.delete(key);
      const worker = workers.get(lease.workerId)!;
      worker.leases.delete(key);
      if (worker.exclusiveLease === key) worker.exclusiveLease = null;
      return true;
    },

    isExpired(lease) {
      return lease.expiresAtMs <= model.now;
    },

    reap() {
      const expired = [...leases.values()].filter((lease) => model.isExpired(lease));
      for (const lease of expired) model.release(lease.jobId, lease.attempt);
      return expired;
    },

    restoreSame(jobId, attempt, leaseTtlMs) {
      leases.get(leaseKey(jobId, attempt))!.expiresAtMs = model.now + leaseTtlMs;
    },

    status(workerId) {
      const worker = workers.get(workerId);
      return {
        attached: worker?.sessionId != null,
        sessionId: worker?.sessionId ?? null,
        replicaId: worker?.replicaId ?? null,
        fresh: worker !== undefined && model.isFresh(worker),
        activeLeases: worker?.leases.size ?? 0,
      };
    },

    isFresh(worker) {
      return (
        worker.sessionId !== null &&
        worker.heartbeatAtMs !== null &&
        model.now - worker.heartbeatAtMs <= model.heartbeatTtlMs
      );
    },

    lastWorkerOfRun(runId) {
      return runId === "" ? undefined : runs.get(runId);
    },
  };
  return model;
}
