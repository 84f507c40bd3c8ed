// What agents' reports do to jobs: acceptance, finish, lost leases, cancel.
// Every write is fenced on (job, attempt, worker) in Postgres, so a report
// from a stale attempt or another worker changes nothing.

import type { Logger } from "../logger.ts";
import { outcomeOfFinish, type FinishFacts } from "../core/job-outcome.ts";
import { TERMINAL_JOB_STATES, type JobRecord } from "../domain.ts";
import type { Database } from "../stores/database.ts";
import type { LeaseStore } from "../stores/lease-store.ts";
import { BUILTIN_CANCEL_CHANNEL } from "./builtin-worker.ts";
import type { JobEvents } from "./job-events.ts";
import type { JobPlacer } from "./job-placer.ts";
import { encodeWorkerMessage } from "./worker-messages.ts";

/** How often expired leases are looked for, as a fraction of the lease TTL. */
const REAP_FRACTION = 4;
const DEFAULT_CANCEL_GRACE_MS = 10_000;

export interface JobLifecycleOptions {
  db: Database;
  leases: LeaseStore;
  events: JobEvents;
  placer: JobPlacer;
  logger: Logger;
  leaseTtlMs: number;
  onFinished?: (job: JobRecord) => void;
}

export interface JobLifecycle {
  start(): void;
  accepted(workerId: string, jobId: string, attempt: number): Promise<JobRecord | null>;
  finished(workerId: string, jobId: string, attempt: number, facts: FinishFacts): Promise<JobRecord | null>;
  /** Cancels a queued job at once; asks the worker to stop a placed one. */
  cancel(job: JobRecord, graceMs: number | null): Promise<JobRecord>;
  reapOnce(): Promise<number>;
  close(): Promise<void>;
}

export function createJobLifecycle(options: JobLifecycleOptions): JobLifecycle {
  const { db, leases, events, placer, logger } = options;
  let reaper: NodeJS.Timeout | null = null;
  let reaping: Promise<number> | null = null;

  async function accepted(workerId: string, jobId: string, attempt: number): Promise<JobRecord | null> {
    const now = new Date();
    const job = await db.jobs.transition(
      jobId,
      { states: ["assigned"], attempt, workerId },
      { state: "running", startedAt: now },
      { update: { attempt, patch: { state: "running", acceptedAt: now } } },
    );
    if (job !== null) {
      logger.info({ event: "job_running", jobId, attempt, workerId }, "job running");
      void events.changed(jobId, "running");
    }
    return job;
  }

  async function finished(workerId: string, jobId: string, attempt: number, facts: FinishFacts): Promise<JobRecord | null> {
    const outcome = outcomeOfFinish(facts);
    const now = new Date();
    const job = await db.jobs.transition(
      jobId,
      { states: ["assigned", "running"], attempt, workerId },
      { state: outcome.state, exitCode: outcome.exitCode, failureReason: outcome.failureReason, message: outcome.message, endedAt: now },
      { update: { attempt, patch: { state: "ended", endedAt: now, outcome: outcome.state, exitCode: outcome.exitCode } } },
    );
    await leases.release(jobId, attempt);
    if (job !== null) {
      logger.info(
        { event: "job_finished", jobId, attempt, workerId, state: job.state, exitCode: job.exitCode },
        `job ${job.state}`,
      );
      void events.changed(jobId, job.state);
      options.onFinished?.(job);
      if (job.resolvedPoolId !== null) void placer.drainPool(job.resolvedPoolId);
    }
    return job;
  }

  async function cancel(job: JobRecord, graceMs: number | null): Promise<JobRecord> {
    if (TERMINAL_JOB_STATES.has(job.state)) return job;
    const now = new Date();
    if (job.state === "queued") {
      const cancelled = await db.jobs.transition(
        job.id,
        { states: ["queued"], attempt: job.attempt },
        { state: "cancelled", message: "cancelled while queued", endedAt: now },
      );
      if (cancelled !== null) {
        void events.changed(job.id, "cancelled");
        return cancelled;
      }
      const current = await db.jobs.get(job.id);
      return current === null ? job : cancel(current, graceMs);
    }
    if (job.builtinWorker) {
      await leases.publish(BUILTIN_CANCEL_CHANNEL, JSON.stringify({ jobId: job.id, graceMs: graceMs ?? DEFAULT_CANCEL_GRACE_MS }));
      logger.info({ event: "job_cancel_requested", jobId: job.id, attempt: job.attempt, builtin: true }, "cancel requested");
      return job;
    }
    if (job.workerId === null) return job;
    const delivered = await leases.deliver({
      workerId: job.workerId,
      payload: encodeWorkerMessage({
        type: "cancel",
        jobId: job.id,
        attempt: job.attempt,
        graceMs: graceMs ?? DEFAULT_CANCEL_GRACE_MS,
      }),
    });
    logger.info({ event: "job_cancel_requested", jobId: job.id, attempt: job.attempt, delivered }, "cancel requested");
    if (delivered) return job;
    // Nobody holds the worker's stream: nothing of the job can be running
    // under Muster's control any more, so record the cancel now.
    const cancelled = await db.jobs.transition(
      job.id,
      { states: ["assigned", "running"], attempt: job.attempt },
      { state: "cancelled", message: "cancelled; the worker was not connected", endedAt: now },
      { update: { attempt: job.attempt, patch: { state: "ended", endedAt: now, outcome: "cancelled" } } },
    );
    await leases.release(job.id, job.attempt);
    if (cancelled === null) return (await db.jobs.get(job.id)) ?? job;
    void events.changed(job.id, "cancelled");
    if (cancelled.resolvedPoolId !== null) void placer.drainPool(cancelled.resolvedPoolId);
    return cancelled;
  }

  async function reap(): Promise<number> {
    const expired = await leases.reapExpiredLeases();
    for (const lease of expired) {
      const job = await db.jobs.get(lease.jobId);
      if (job === null || job.attempt !== lease.attempt || TERMINAL_JOB_STATES.has(job.state) || job.state === "queued") {
        continue;
      }
      await leases.deliver({
        workerId: lease.workerId,
        payload: encodeWorkerMessage({ type: "lease_lost", jobId: lease.jobId, attempt: lease.attempt, reason: "lease expired" }),
      });
      await placer.requeue(job, lease.attempt, "worker_lost", `worker ${lease.workerId} lost: its lease expired`);
    }
    return expired.length;
  }

  function reapOnce(): Promise<number> {
    reaping ??= reap().finally(() => {
      reaping = null;
    });
    return reaping;
  }

  return {
    start() {
      reaper = setInterval(() => {
        reapOnce().catch((error) => logger.error({ event: "reap_failed", err: error }, "reaping expired leases failed"));
      }, Math.max(100, Math.floor(options.leaseTtlMs / REAP_FRACTION)));
      reaper.unref();
    },
    accepted,
    finished,
    cancel,
    reapOnce,
    async close() {
      if (reaper !== null) clearInterval(reaper);
      await reaping;
    },
  };
}
