// Places queued jobs. All placement on this replica goes through drainPool,
// which owns the per-pool "draining" state below: at most one pass per pool
// runs at a time here, and a request that arrives during a pass schedules one
// more. Across replicas, the lease store's atomic choice and the fenced
// Postgres transition (queued, attempt n) -> (assigned, attempt n+1) keep two
// replicas from placing one job twice.
//
// A pool is drained when something may have made room: a job submitted, a
// lease released, a worker attached or enabled. There is no polling loop;
// the only timers are the assignment timeouts and the queue-deadline sweep.
//
// A submitted job is not inserted by submit(): it waits for the pool's next
// pass, which decides it together with the jobs already queued (in queue
// order) and inserts it already decided: assigned with its first attempt,
// failed, or queued with the reason it waits. A job placed at once thus costs
// one commit, not two. When the queue is longer than one page, or the pass
// cannot run (paused, closing, failed), the job is inserted queued as before.

import { randomUUID } from "node:crypto";
import type { Logger } from "../logger.ts";
import type { Choice } from "../core/choose-worker.ts";
import { decideOnChoice, routeJob } from "../core/placement-decision.ts";
import { resolvePool, type PoolRef, type TargetRef } from "../core/resolve-pool.ts";
import { queueOrder, type AttemptRecord, type JobRecord, type WorkerPoolRecord } from "../domain.ts";
import { queuedJobRecord, type Database, type NewJob } from "../stores/database.ts";
import type { AcquireRequest, LeaseStore } from "../stores/lease-store.ts";
import type { ConfigCache } from "./config-cache.ts";
import type { JobEvents } from "./job-events.ts";
import { encodeWorkerMessage } from "./worker-messages.ts";

type AcquireChoices = Awaited<ReturnType<LeaseStore["acquireMany"]>>;
/** The lease store's answer when a pool has no healthy worker at all. */
type NoHealthyWorker = Extract<Choice, { ok: false }>;

/** Queued jobs read per page of a pass. */
const DRAIN_BATCH = 64;
/** The fewest a pass's first page reads when the pool's last pass ran out of room. */
const MIN_FIRST_PAGE = 8;
/** How often queued jobs past their queue deadline are failed. */
const QUEUE_DEADLINE_SWEEP_MS = 1000;

/** A validated SubmitJob request: what the submitter chose. */
export type SubmitInput = Omit<NewJob, "id" | "resolvedPoolId" | "poolRule" | "poolReason" | "queueDeadline" | "createdAt">;

export class NotFoundError extends Error {
  override name = "NotFoundError";
}

/** Runs jobs that land on the built-in worker (src/scheduler/builtin-worker.ts). */
export interface BuiltinRunner {
  /** Takes the job if it has room; false: it is full and the job waits. */
  tryStart(job: JobRecord): Promise<boolean>;
  readonly enabled: boolean;
}

export interface JobPlacerOptions {
  db: Database;
  cache: ConfigCache;
  leases: LeaseStore;
  events: JobEvents;
  logger: Logger;
  leaseTtlMs: number;
  assignmentTimeoutMs: number;
  builtin: BuiltinRunner;
  onPlaced?: (job: JobRecord, submittedAt: Date) => void;
  /**
   * Before a job fails for lack of healthy workers: does the lease store
   * still hold its data? False (it is being rebuilt) keeps the job queued.
   */
  verifyStore?: () => Promise<boolean>;
}

export interface JobPlacer {
  start(): void;
  submit(input: SubmitInput): Promise<JobRecord>;
  drainPool(poolId: string): Promise<void>;
  /** Puts an assigned attempt back in the queue (unreachable worker, lost lease) and drains its pool. */
  requeue(job: JobRecord, attempt: number, outcome: string, message: string): Promise<JobRecord | null>;
  /** While paused (the lease store is being rebuilt), nothing is placed; drains are remembered. */
  setPaused(paused: boolean): void;
  /** Drains every pool that has queued jobs. */
  drainAll(): Promise<void>;
  close(): Promise<void>;
}

export function createJobPlacer(options: JobPlacerOptions): JobPlacer {
  const { db, cache, leases, events, logger } = options;
  // Per pool: the running pass loop, how many passes were asked for and how
  // many have finished, and who waits for which. A caller waits only for the
  // first pass that starts after its request, not for the whole loop.
  const drains = new Map<string, { loop: Promise<void>; requested: number; done: number; waiters: Array<{ upTo: number; resolve: () => void }> }>();
  // Decisions about jobs whose submitter is waiting, so submit need not read the job back.
  const awaited = new Set<string>();
  const decided = new Map<string, JobRecord>();
  const remember = (job: JobRecord | null) => {
    if (job !== null && awaited.has(job.id)) decided.set(job.id, job);
  };
  // Per pool: submitted jobs not yet inserted, waiting for the pool's next pass.
  const submissions = new Map<string, Submission[]>();
  // Pools whose queue was empty when this replica last read it (a hint for drainPass).
  const queueSeenEmpty = new Set<string>();
  // Per pool: how many jobs its last pass placed before its workers had no
  // room left. With a backlog, room frees a few slots at a time (finishes),
  // and a first page of 64 read and decoded for every few placed cost more
  // than the placing; the next pass reads about twice as many as the last
  // one placed, and pages on at full size if there is more room than that.
  const placedBeforeFull = new Map<string, number>();
  const timers = new Set<NodeJS.Timeout>();
  let sweep: NodeJS.Timeout | null = null;
  let closed = false;
  let paused = false;

  async function submit(input: SubmitInput): Promise<JobRecord> {
    const spaceDefault = await cache.defaultPool(input.space);
    let requested: PoolRef | null = null;
    if (input.requestedPoolId !== null) {
      const pool = await cache.pool(input.requestedPoolId);
      if (pool === null || pool.space !== input.space) {
        throw new NotFoundError(`worker pool ${input.requestedPoolId} not found in space ${input.space}`);
      }
      requested = pool;
    }
    let target: TargetRef | null = null;
    if (input.targetId !== null) {
      const found = await cache.target(input.targetId);
      if (found === null || found.space !== input.space) {
        throw new NotFoundError(`target ${input.targetId} not found in space ${input.space}`);
      }
      const pool = found.defaultPoolId === null ? null : await cache.pool(found.defaultPoolId);
      target = { id: found.id, name: found.name, defaultPool: pool };
    }
    const resolution = resolvePool({ spaceDefault, requested, target });
    const now = new Date();
    const newJob: NewJob = {
      id: randomUUID(),
      space: input.space,
      name: input.name,
      script: input.script,
      env: input.env,
      requestedPoolId: input.requestedPoolId,
      targetId: input.targetId,
      runId: input.runId,
      requiredLabels: input.requiredLabels,
      priority: input.priority,
      exclusive: input.exclusive,
      timeoutMs: input.timeoutMs,
      queueTimeoutMs: input.queueTimeoutMs,
      maxAttempts: input.maxAttempts,
      resolvedPoolId: resolution.pool.id,
      poolRule: resolution.rule,
      poolReason: resolution.reason,
      queueDeadline: input.queueTimeoutMs === null ? null : new Date(now.getTime() + input.queueTimeoutMs),
      createdAt: now,
    };
    const poolId = resolution.pool.id;
    // Handed to the pool's next pass, which decides it with the queue and
    // inserts it already decided: placed at once, the job costs one commit.
    const submission = newSubmission(newJob);
    let waiting = submissions.get(poolId);
    if (waiting === undefined) submissions.set(poolId, (waiting = []));
    waiting.push(submission);
    awaited.add(newJob.id);
    try {
      await drainPool(poolId);
      if (!submission.taken) {
        // No pass took it (placement paused or closing, or the pass failed
        // first): insert it queued; a later pass places it.
        waiting.splice(waiting.indexOf(submission), 1);
        if (waiting.length === 0 && submissions.get(poolId) === waiting) submissions.delete(poolId);
        const job = await insert(newJob);
        await drainPool(poolId);
        return decided.get(job.id) ?? (await db.jobs.get(job.id)) ?? job;
      }
      const inserted = await submission.result;
      // Inserted queued, the pass may have decided it afterwards (or the built-in worker started it).
      return submission.decided ? inserted : (decided.get(inserted.id) ?? (await db.jobs.get(inserted.id)) ?? inserted);
    } finally {
      awaited.delete(newJob.id);
      decided.delete(newJob.id);
    }
  }

  /** Inserts a job queued (or already decided: `initial`), and says so in the log. */
  async function insert(newJob: NewJob, initial?: Parameters<Database["jobs"]["create"]>[1]): Promise<JobRecord> {
    const job = await db.jobs.create(newJob, initial);
    logger.info({ event: "job_submitted", jobId: job.id, poolId: job.resolvedPoolId, rule: job.poolRule }, "job submitted");
    return job;
  }

  /** Takes the pool's waiting submissions for a pass; the pass must settle every one. */
  function takeSubmissions(poolId: string): Submission[] {
    const taken = submissions.get(poolId) ?? [];
    submissions.delete(poolId);
    for (const submission of taken) submission.taken = true;
    return taken;
  }

  /** Inserts submissions queued and settles them with what was inserted. */
  async function insertQueued(taken: Submission[]): Promise<void> {
    await Promise.all(taken.map((submission) => submission.settle(insert(submission.job), false)));
  }

  function drainPool(poolId: string): Promise<void> {
    if (paused || closed) return Promise.resolve();
    let drain = drains.get(poolId);
    const fresh = drain === undefined;
    drain ??= { loop: Promise.resolve(), requested: 0, done: 0, waiters: [] };
    const upTo = ++drain.requested;
    const waited = new Promise<void>((resolve) => drain.waiters.push({ upTo, resolve }));
    if (fresh) {
      const state = drain;
      drains.set(poolId, state);
      const failed = (error: unknown) => logger.error({ event: "drain_failed", poolId, err: error }, "placing queued jobs failed");
      state.loop = (async () => {
        // A pass whose decisions left nothing queued behind them lets the
        // next pass decide while its writes commit (see drainPass); at most
        // one pass writes while the next decides.
        // Whoever waits for a pass is answered once its writes are done.
        let writing: Promise<void> | null = null;
        const answer = (covered: number) => {
          state.waiters = state.waiters.filter((waiter) => (waiter.upTo <= covered ? (waiter.resolve(), false) : true));
        };
        for (;;) {
          while (state.done < state.requested && !closed && !paused) {
            const covered = state.requested;
            let pending: Promise<void> | null = null;
            try {
              pending = (await drainOnce(poolId))?.writes ?? null;
            } catch (error) {
              failed(error);
            }
            if (writing !== null) await writing;
            state.done = covered;
            if (pending === null) {
              writing = null;
              answer(covered);
            } else {
              writing = pending.catch(failed).then(() => answer(covered));
            }
          }
          if (writing === null) break;
          // A request made while the last writes commit (a job they placed
          // may already have finished and freed its slot) is still this
          // loop's: look again before leaving, with no await in between.
          await writing;
          writing = null;
        }
        drains.delete(poolId);
        for (const waiter of state.waiters) waiter.resolve();
      })();
    }
    return waited;
  }

  /** One pass; returns its writes if they may commit while the next pass decides. */
  async function drainOnce(poolId: string): Promise<Pending | null> {
    const taken = takeSubmissions(poolId);
    try {
      return await drainPass(poolId, taken);
    } finally {
      // A submission the pass did not reach (it ended early, or failed: the
      // lease store may be unreachable) is inserted queued, as any job is
      // while placement cannot run; a later pass places it.
      const left = taken.filter((submission) => !submission.settled);
      if (left.length > 0) await insertQueued(left);
    }
  }

  /**
   * Places what the pool's queue and the new submissions allow. Returns the
   * last page's writes still committing when the next pass may decide
   * before they are done: the pass read the whole queue in one page and put
   * no new job into the queue. Its assigned jobs then hold leases the next
   * pass sees ("held"), and whatever stays queued was committed before this
   * pass read it, so priority and FIFO order hold. Otherwise returns null,
   * everything written.
   */
  async function drainPass(poolId: string, taken: Submission[]): Promise<Pending | null> {
    const pool = await cache.pool(poolId);
    if (pool === null) {
      queueSeenEmpty.delete(poolId);
      await insertQueued(taken.splice(0));
      // The pool was deleted: what still waits in its queue can never run.
      for (const job of await db.jobs.queued(poolId, DRAIN_BATCH * 16)) {
        await fail(job, "no_healthy_worker", `worker pool ${poolId} was deleted`);
      }
      return null;
    }
    const route = routeJob({
      poolIsSpaceDefault: pool.isDefault,
      poolName: pool.name,
      registeredWorkers: pool.isDefault ? await db.workers.countInPool(pool.id) : 1,
      builtinEnabled: options.builtin.enabled,
    });
    const targetNames = new Map<string, string | null>();
    if (route.kind !== "pool") await insertQueued(taken.splice(0));
    // Page through the queue in order. Jobs that wait for something only they
    // need (labels, an idle worker, a healthy worker before their deadline)
    // are passed over; the first plain job that cannot be placed ends the pass.
    let after: JobRecord | undefined;
    let placedThisPass = 0;
    for (;;) {
      // When the pool's queue was empty at its last read, the new jobs are
      // likely the whole queue: their leases are taken while the queue is
      // read, not after, which takes one round trip off a submit's way to
      // its worker. Should the queue hold jobs after all, those leases go
      // back before the page is decided as usual.
      let early: { jobs: JobRecord[]; choices: Promise<AcquireChoices> } | null = null;
      if (after === undefined && taken.length > 0 && route.kind === "pool" && queueSeenEmpty.has(poolId) && !closed && !paused) {
        const jobs = taken.map((submission) => queuedJobRecord(submission.job)).sort(queueOrder);
        early = { jobs, choices: leases.acquireMany(jobs.map((job) => acquireRequest(job, pool))) };
        early.choices.catch(() => {}); // awaited below, after the read: not an unhandled rejection meanwhile
      }
      const lastPlaced = placedBeforeFull.get(poolId);
      const limit = after === undefined && lastPlaced !== undefined ? Math.min(DRAIN_BATCH, Math.max(MIN_FIRST_PAGE, 2 * lastPlaced)) : DRAIN_BATCH;
      let queued: JobRecord[];
      try {
        queued = await db.jobs.queued(poolId, limit, after);
      } catch (error) {
        if (early !== null) await releaseChoices(early.jobs, early.choices);
        throw error;
      }
      const wholeQueue = queued.length < limit;
      if (wholeQueue) placedBeforeFull.delete(poolId);
      if (after === undefined) {
        if (wholeQueue && queued.length === 0) queueSeenEmpty.add(poolId);
        else queueSeenEmpty.delete(poolId);
      }
      let chosen: Promise<AcquireChoices> | undefined;
      if (early !== null) {
        if (queued.length === 0 && !closed && !paused) chosen = early.choices;
        else await releaseChoices(early.jobs, early.choices);
      }
      let fresh = new Map<string, Submission>();
      if (after === undefined && taken.length > 0) {
        if (wholeQueue && !closed && !paused) {
          // The whole queue is in this page: new jobs take their places in it.
          fresh = new Map(taken.map((submission) => [submission.job.id, submission]));
          queued =
            chosen !== undefined && early !== null
              ? early.jobs
              : [...queued, ...taken.map((submission) => queuedJobRecord(submission.job))].sort(queueOrder);
        } else {
          await insertQueued(taken.splice(0));
        }
      }
      if (queued.length === 0 || closed || paused) return null;
      if (route.kind === "pool") {
        const page = await placePage(queued, pool, targetNames, fresh, chosen);
        if (page.queuedFresh) queueSeenEmpty.delete(poolId);
        placedThisPass += page.placed;
        if (wholeQueue && !page.queuedFresh) return { writes: page.writes };
        await page.writes;
        if (page.outcome === "blocked") {
          if (page.full) placedBeforeFull.set(poolId, placedThisPass);
          return null;
        }
        if (page.unhealthy !== null && !wholeQueue) {
          // The pool has no healthy worker: no job further back can be
          // placed either, and reading the rest of the queue page by page
          // would cost every pass (every submit) the whole backlog. Only
          // the jobs that cannot wait are looked up, through their index.
          await failNotWaiting(pool, page.unhealthy, targetNames);
          return null;
        }
      } else {
        for (const job of queued) {
          if ((await placeElsewhere(job, route)) === "blocked") return null;
        }
      }
      if (wholeQueue) return null;
      after = queued[queued.length - 1];
    }
  }

  async function placeElsewhere(
    job: JobRecord,
    route: Exclude<ReturnType<typeof routeJob>, { kind: "pool" }>,
  ): Promise<"placed" | "blocked" | "skipped"> {
    if (route.kind === "fail") {
      await fail(job, route.reason, route.message);
      return "placed";
    }
    return (await options.builtin.tryStart(job)) ? "placed" : "blocked";
  }

  /**
   * Places a page of the pool's queue: one lease-store call decides the page
   * in queue order (stopping at the first plain job without room), then the
   * assignments are written together (one statement, see job-batches.ts) and
   * pushed to their workers. "blocked": a job that must be placed before the
   * rest of the queue is waiting, so the pass ends here.
   */
  async function placePage(
    queued: JobRecord[],
    pool: WorkerPoolRecord,
    targetNames: Map<string, string | null>,
    fresh: Map<string, Submission>,
    chosen?: Promise<AcquireChoices>,
  ): Promise<{
    outcome: "placed" | "blocked";
    /** Jobs given a worker. */
    placed: number;
    /** The page ended at a plain job that found every healthy worker busy. */
    full: boolean;
    writes: Promise<void>;
    queuedFresh: boolean;
    unhealthy: NoHealthyWorker | null;
  }> {
    const choices = await (chosen ?? leases.acquireMany(queued.map((job) => acquireRequest(job, pool))));
    const now = Date.now();
    let blocked = choices.length < queued.length;
    let placed = 0;
    let full = false;
    let storeHolds: boolean | undefined;
    let queuedFresh = false;
    let unhealthy: NoHealthyWorker | null = null;
    const writes: Array<Promise<unknown>> = [];
    for (let n = 0; n < choices.length; n++) {
      const job = queued[n]!;
      const choice = choices[n]!;
      // Another replica is placing this attempt; its lease is not ours to release.
      if (choice === "held") continue;
      if (!choice.ok && choice.code === "no_healthy_worker" && choice.healthy === 0) unhealthy ??= choice;
      const outcome = await decide(job, choice, pool, targetNames, now);
      const submission = fresh.get(job.id);
      if (outcome.kind === "leased") {
        placed++;
        writes.push(assign(job, job.attempt + 1, outcome.workerId, outcome.reason, pool, now, submission));
        continue;
      }
      // A job that would fail for want of a healthy worker fails only if the
      // lease store still holds its data (it may be being rebuilt).
      if (outcome.kind === "fail") storeHolds ??= options.verifyStore === undefined || (await options.verifyStore());
      if (outcome.kind === "fail" && storeHolds) {
        writes.push(fail(job, outcome.reason, outcome.message, submission));
        continue;
      }
      if (outcome.kind === "wait" && submission !== undefined) {
        queuedFresh = true;
        writes.push(submission.settle(insert(submission.job, { patch: { workerReason: outcome.reason } })));
      } else if (outcome.kind === "wait" && job.workerReason !== outcome.reason) {
        writes.push(
          db.jobs.transition(job.id, { states: ["queued"], attempt: job.attempt }, { workerReason: outcome.reason }).then(remember),
        );
      }
      // Jobs without special needs queue behind this one (priority, then FIFO);
      // a job that waits for labels or exclusivity does not hold the others back.
      const special = job.requiredLabels.length > 0 || job.exclusive || (!choice.ok && choice.code === "no_healthy_worker");
      if (outcome.kind === "wait" && special) continue;
      full = !choice.ok && choice.code === "all_busy";
      // This job holds the queue: leases taken behind it in this page go back.
      for (let later = n + 1; later < choices.length; later++) {
        const taken = choices[later]!;
        if (taken !== "held" && taken.ok) writes.push(leases.release(queued[later]!.id, queued[later]!.attempt + 1));
      }
      blocked = true;
      break;
    }
    const written = Promise.allSettled(writes).then((settled) => {
      const failure = settled.find((result) => result.status === "rejected");
      if (failure !== undefined) throw failure.reason;
    });
    return { outcome: blocked ? "blocked" : "placed", placed, full, writes: written, queuedFresh, unhealthy };
  }

  /** What the lease store's choice means for the job (placement-decision.ts); target names are cached per pass. */
  async function decide(job: JobRecord, choice: Choice, pool: WorkerPoolRecord, targetNames: Map<string, string | null>, now: number) {
    let targetName: string | null = null;
    if (job.targetId !== null && job.poolRule === "target_default") {
      if (!targetNames.has(job.targetId)) targetNames.set(job.targetId, (await cache.target(job.targetId))?.name ?? null);
      targetName = targetNames.get(job.targetId) ?? null;
    }
    return decideOnChoice({
      choice,
      poolName: pool.name,
      targetName,
      requiredLabels: job.requiredLabels,
      exclusive: job.exclusive,
      queueDeadlineMs: job.queueDeadline?.getTime() ?? null,
      now,
    });
  }

  /**
   * The pool has no healthy worker (`unhealthy`, as the lease store said):
   * fails its queued jobs that did not ask to wait for one, or whose wait is
   * over, wherever they are in the queue. The rest keep waiting.
   */
  async function failNotWaiting(pool: WorkerPoolRecord, unhealthy: NoHealthyWorker, targetNames: Map<string, string | null>): Promise<void> {
    if (options.verifyStore !== undefined && !(await options.verifyStore())) return;
    for (;;) {
      const now = Date.now();
      const jobs = await db.jobs.queuedNotWaiting(pool.id, new Date(now), DRAIN_BATCH);
      const failures: Array<Promise<unknown>> = [];
      for (const job of jobs) {
        const outcome = await decide(job, unhealthy, pool, targetNames, now);
        if (outcome.kind === "fail") failures.push(fail(job, outcome.reason, outcome.message));
      }
      await Promise.all(failures);
      // A full page again only if its jobs left the queue (another replica may have taken them first).
      if (jobs.length < DRAIN_BATCH || failures.length === 0 || closed || paused) return;
    }
  }

  function acquireRequest(job: JobRecord, pool: WorkerPoolRecord): AcquireRequest {
    return {
      poolId: pool.id,
      jobId: job.id,
      attempt: job.attempt + 1,
      runId: job.runId,
      requiredLabels: job.requiredLabels,
      exclusive: job.exclusive,
      leaseTtlMs: options.leaseTtlMs,
    };
  }

  /** Gives back the leases an early acquire took (see drainPass). */
  async function releaseChoices(jobs: JobRecord[], choices: Promise<AcquireChoices>): Promise<void> {
    let taken: AcquireChoices;
    try {
      taken = await choices;
    } catch {
      return; // nothing was taken (the store is unreachable, say)
    }
    await Promise.all(
      taken.map((choice, n) => (choice !== "held" && choice.ok ? leases.release(jobs[n]!.id, jobs[n]!.attempt + 1) : undefined)),
    );
  }

  /** Records the lease as the job's next attempt, then pushes the job to the worker's stream. */
  async function assign(
    job: JobRecord,
    attempt: number,
    workerId: string,
    reason: string,
    pool: WorkerPoolRecord,
    now: number,
    submission: Submission | undefined,
  ): Promise<void> {
    const patch = { state: "assigned" as const, attempt, workerId, workerReason: reason, builtinWorker: false };
    const row: AttemptRecord = {
      jobId: job.id,
      attempt,
      workerId,
      state: "assigned",
      assignedAt: new Date(now),
      acceptedAt: null,
      endedAt: null,
      outcome: null,
      exitCode: null,
      lastSeq: 0,
    };
    let assigned: JobRecord | null;
    if (submission !== undefined) {
      // A new job: inserted already assigned, with its attempt, in one statement.
      const inserted = insert(submission.job, { patch, attempt: row });
      void submission.settle(inserted);
      assigned = await inserted.catch(async (error: unknown) => {
        await leases.release(job.id, attempt);
        throw error;
      });
    } else {
      assigned = await db.jobs.transition(job.id, { states: ["queued"], attempt: job.attempt }, patch, { insert: row });
    }
    if (assigned === null) {
      // Another replica placed or cancelled it first.
      await leases.release(job.id, attempt);
      return;
    }
    remember(assigned);
    options.onPlaced?.(assigned, job.createdAt);
    const delivered = await leases.deliver({
      workerId,
      payload: encodeWorkerMessage({
        type: "assign",
        jobId: job.id,
        attempt,
        name: job.name,
        script: job.script,
        env: job.env,
        timeoutMs: job.timeoutMs,
        runId: job.runId,
      }),
    });
    logger.info({ event: "job_assigned", jobId: job.id, attempt, workerId, pool: pool.name, delivered }, "job assigned");
    void events.changed(job.id, "assigned");
    if (!delivered) {
      await requeue(assigned, attempt, "unreachable", "worker stream not held by any replica");
      return;
    }
    watchAcceptance(job.id, attempt, workerId);
  }

  /** DESIGN "Choosing the worker", step 4: no acceptance in time, place it again. */
  function watchAcceptance(jobId: string, attempt: number, workerId: string): void {
    const timer = setTimeout(async () => {
      timers.delete(timer);
      try {
        const job = await db.jobs.get(jobId);
        if (job === null || job.state !== "assigned" || job.attempt !== attempt) return;
        logger.warn({ event: "assignment_timeout", jobId, attempt, workerId }, "worker did not accept the assignment in time");
        await leases.deliver({
          workerId,
          payload: encodeWorkerMessage({ type: "disconnect", reason: "assignment not accepted in time", code: 14 }),
        });
        await requeue(job, attempt, "unreachable", `worker ${workerId} did not accept the assignment in time`);
      } catch (error) {
        logger.error({ event: "assignment_timeout_failed", jobId, err: error }, "handling an assignment timeout failed");
      }
    }, options.assignmentTimeoutMs);
    timer.unref();
    timers.add(timer);
  }

  async function requeue(job: JobRecord, attempt: number, outcome: string, message: string): Promise<JobRecord | null> {
    const now = new Date();
    // An attempt that never reached the worker does not use up the job's
    // attempts; one that was lost mid-job does.
    let attemptsLeft = true;
    if (outcome !== "unreachable") {
      const earlier = await db.jobs.attempts(job.id);
      const consumed = earlier.filter((a) => a.attempt !== attempt && a.outcome !== "unreachable").length + 1;
      attemptsLeft = consumed < job.maxAttempts;
    }
    const patch = attemptsLeft
      ? { state: "queued" as const, workerId: null, message: `${message}; placing again` }
      : {
          state: "failed" as const,
          failureReason: "worker_lost" as const,
          message: `${message}; no attempts left (${job.maxAttempts})`,
          endedAt: now,
        };
    const updated = await db.jobs.transition(
      job.id,
      { states: ["assigned", "running"], attempt },
      patch,
      { update: { attempt, patch: { state: "ended", endedAt: now, outcome } } },
    );
    await leases.release(job.id, attempt);
    if (updated === null) return null;
    logger.warn({ event: "attempt_ended", jobId: job.id, attempt, outcome, requeued: attemptsLeft }, message);
    void events.changed(job.id, updated.state);
    if (updated.resolvedPoolId !== null) void drainPool(updated.resolvedPoolId);
    return updated;
  }

  async function fail(job: JobRecord, reason: JobRecord["failureReason"], message: string, submission?: Submission): Promise<void> {
    const patch = { state: "failed" as const, failureReason: reason, message, workerReason: message, endedAt: new Date() };
    let failed: JobRecord | null;
    if (submission !== undefined) {
      // A new job: inserted already failed.
      failed = await submission.settle(insert(submission.job, { patch }));
    } else {
      failed = await db.jobs.transition(job.id, { states: ["queued"], attempt: job.attempt }, patch);
    }
    remember(failed);
    if (failed !== null) {
      logger.info({ event: "job_failed", jobId: job.id, reason }, message);
      void events.changed(job.id, "failed");
    }
  }

  async function sweepQueueDeadlines(): Promise<void> {
    const expired = await db.jobs.queueExpired(new Date(), 100);
    const pools = new Set(expired.map((job) => job.resolvedPoolId).filter((id): id is string => id !== null));
    for (const poolId of pools) await drainPool(poolId);
  }

  return {
    start() {
      sweep = setInterval(() => {
        sweepQueueDeadlines().catch((error) => logger.error({ event: "queue_sweep_failed", err: error }, "queue sweep failed"));
      }, QUEUE_DEADLINE_SWEEP_MS);
      sweep.unref();
    },
    submit,
    drainPool,
    requeue,
    setPaused(value) {
      paused = value;
    },
    async drainAll() {
      for (const poolId of await db.jobs.poolsWithQueuedJobs()) await drainPool(poolId);
    },
    async close() {
      closed = true;
      if (sweep !== null) clearInterval(sweep);
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      await Promise.allSettled([...drains.values()].map((drain) => drain.loop));
    },
  };
}

/** Writes still committing, wrapped: an async function cannot resolve to a promise. */
interface Pending {
  writes: Promise<void>;
}

/** A submitted job on its way into the pool's next pass. */
interface Submission {
  job: NewJob;
  /** A pass has taken it and must settle it. */
  taken: boolean;
  settled: boolean;
  /** Inserted as decided by a pass (placed, failed, or waiting with its reason), not plainly queued. */
  decided: boolean;
  /** What the submitter gets: the job as inserted, or the insert's error. */
  result: Promise<JobRecord>;
  /** Settles the submission with an insert (`decided`: by the pass, default yes); returns that insert. */
  settle(inserted: Promise<JobRecord>, decided?: boolean): Promise<JobRecord>;
}

function newSubmission(job: NewJob): Submission {
  let resolve!: (job: Promise<JobRecord>) => void;
  const result = new Promise<JobRecord>((r) => {
    resolve = r;
  });
  // The submitter may be gone (it always awaits, but a rejection must never go unhandled).
  result.catch(() => {});
  const submission: Submission = {
    job,
    taken: false,
    settled: false,
    decided: false,
    result,
    settle(inserted, decided = true) {
      if (!submission.settled) {
        submission.settled = true;
        submission.decided = decided;
        resolve(inserted);
      }
      return inserted;
    },
  };
  return submission;
}
