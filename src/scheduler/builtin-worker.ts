// The built-in worker: runs steps on the server's own host when the space's
// default pool has no registered workers (DESIGN, "Choosing the worker",
// step 1). It uses the agent's executor and log batcher, so a step behaves
// the same here as on a worker: bash in its own process group and working
// directory, numbered log chunks, the same outcomes.
//
// Each replica has its own built-in worker with its own capacity. All of its
// state (the running attempts) is owned here. Cancels reach it through the
// lease store's fan-out channel, since any replica may receive CancelJob.

import { mkdir } from "node:fs/promises";
import path from "node:path";
import { FinishOutcome } from "../../gen/muster/v1/agent_pb.js";
import { LogStream } from "../../gen/muster/v1/job_pb.js";
import { createExecutor, type Executor } from "../../agent/executor.ts";
import { createLogBatcher } from "../../agent/log-batcher.ts";
import { outcomeOfFinish, type FinishOutcomeName } from "../core/job-outcome.ts";
import type { JobRecord, LogChunkRecord } from "../domain.ts";
import type { Logger } from "../logger.ts";
import type { Database } from "../stores/database.ts";
import type { LeaseStore, Unsubscribe } from "../stores/lease-store.ts";
import type { JobEvents } from "./job-events.ts";
import type { BuiltinRunner } from "./job-placer.ts";

/** The worker id recorded on attempts that ran on a built-in worker. */
export const BUILTIN_WORKER_ID = "00000000-0000-0000-0000-000000000000";
export const BUILTIN_CANCEL_CHANNEL = "builtin-cancel";
const FLUSH_MS = 50;
const CHUNK_BYTES = 64 * 1024;
const TIMEOUT_GRACE_MS = 10_000;

const OUTCOMES: Record<number, FinishOutcomeName> = {
  [FinishOutcome.EXITED]: "exited",
  [FinishOutcome.SIGNALED]: "signaled",
  [FinishOutcome.CANCELLED]: "cancelled",
  [FinishOutcome.TIMED_OUT]: "timed_out",
  [FinishOutcome.SPAWN_FAILED]: "spawn_failed",
};

/**
 * The server's environment without its own MUSTER_* settings: database and
 * Redis URLs (with their passwords) must not reach job scripts.
 */
function serverFreeEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("MUSTER_")));
}

export interface BuiltinWorkerOptions {
  db: Database;
  leases: LeaseStore;
  events: JobEvents;
  logger: Logger;
  enabled: boolean;
  capacity: number;
  workDir: string;
  /** Its attempts hold leases like any worker's, renewed while it runs them, so a replica that dies mid-job loses them. */
  leaseTtlMs: number;
  /** A job ended: its pool may have queued jobs that fit now. */
  onFinished: (job: JobRecord) => void;
}

export interface BuiltinWorker extends BuiltinRunner {
  start(): Promise<void>;
  close(): Promise<void>;
}

export function createBuiltinWorker(options: BuiltinWorkerOptions): BuiltinWorker {
  const { db, events, logger } = options;
  const running = new Map<string, { attempt: number; executor: Executor }>();
  let unsubscribe: Unsubscribe | null = null;
  let renewer: NodeJS.Timeout | null = null;
  let closed = false;

  const holdLease = (jobId: string, attempt: number) =>
    options.leases.restoreLease({ jobId, attempt, workerId: BUILTIN_WORKER_ID }, options.leaseTtlMs);

  async function run(job: JobRecord, attempt: number): Promise<void> {
    const dir = path.join(options.workDir, `${job.id}-${attempt}`);
    await mkdir(options.workDir, { recursive: true });
    let persisting: Promise<void> = Promise.resolve();
    const batcher = createLogBatcher({
      jobId: job.id,
      attempt,
      maxChunkBytes: CHUNK_BYTES,
      flushMs: FLUSH_MS,
      onChunk: (chunk) => {
        const record: LogChunkRecord = {
          jobId: job.id,
          attempt,
          seq: Number(chunk.seq),
          stream: chunk.stream === LogStream.STDERR ? "stderr" : "stdout",
          data: chunk.data,
          time: new Date(),
        };
        persisting = persisting
          .then(async () => {
            await db.logs.append([record]);
            batcher.ack(chunk.seq);
            await events.logs(job.id, [record]);
          })
          .catch((error) => logger.error({ event: "builtin_log_failed", jobId: job.id, err: error }, "storing built-in log failed"));
      },
    });
    const executor = createExecutor({
      dir,
      script: job.script,
      env: {
        ...serverFreeEnv(),
        ...job.env,
        MUSTER_JOB_ID: job.id,
        MUSTER_ATTEMPT: String(attempt),
        MUSTER_RUN_ID: job.runId,
        MUSTER_JOB_NAME: job.name,
      },
      timeoutMs: job.timeoutMs,
      killGraceMs: TIMEOUT_GRACE_MS,
      onOutput: (stream, data) => batcher.write(stream === "stderr" ? LogStream.STDERR : LogStream.STDOUT, data),
    });
    running.set(job.id, { attempt, executor });
    await executor.start();
    const result = await executor.done;
    batcher.close();
    await persisting;
    running.delete(job.id);
    const outcome = outcomeOfFinish({
      outcome: OUTCOMES[result.outcome] ?? "exited",
      exitCode: result.exitCode,
      signal: result.signal,
      message: result.message,
    });
    const now = new Date();
    const ended = await db.jobs.transition(
      job.id,
      { states: ["running"], attempt, workerId: BUILTIN_WORKER_ID },
      { state: outcome.state, exitCode: outcome.exitCode, failureReason: outcome.failureReason, message: outcome.message, endedAt: now },
      { update: { attempt, patch: { state: "ended", endedAt: now, outcome: outcome.state, exitCode: outcome.exitCode, lastSeq: Number(batcher.lastSeq) } } },
    );
    await options.leases.release(job.id, attempt);
    if (ended !== null) {
      logger.info({ event: "job_finished", jobId: job.id, attempt, state: ended.state, exitCode: ended.exitCode, builtin: true }, `job ${ended.state}`);
      void events.changed(job.id, ended.state);
      options.onFinished(ended);
    }
  }

  return {
    get enabled() {
      return options.enabled;
    },
    async start() {
      unsubscribe = await options.leases.subscribe(BUILTIN_CANCEL_CHANNEL, (payload) => {
        const { jobId, graceMs } = JSON.parse(payload) as { jobId: string; graceMs: number };
        const entry = running.get(jobId);
        if (entry === undefined) return;
        logger.info({ event: "job_cancel", jobId, attempt: entry.attempt, builtin: true }, "cancelling built-in job");
        entry.executor.cancel(graceMs, "cancel");
      });
      renewer = setInterval(() => {
        for (const [jobId, entry] of running) {
          holdLease(jobId, entry.attempt).catch((error) =>
            logger.warn({ event: "builtin_lease_renew_failed", jobId, err: error }, "renewing a built-in lease failed"),
          );
        }
      }, Math.max(50, Math.floor(options.leaseTtlMs / 3)));
      renewer.unref();
    },
    async tryStart(job) {
      if (closed || running.size >= options.capacity) return false;
      const attempt = job.attempt + 1;
      const now = new Date();
      const started = await db.jobs.transition(
        job.id,
        { states: ["queued"], attempt: job.attempt },
        {
          state: "running",
          attempt,
          workerId: BUILTIN_WORKER_ID,
          builtinWorker: true,
          startedAt: now,
          workerReason: "the default pool has no registered workers: the built-in worker on the server runs it",
        },
        {
          insert: {
            jobId: job.id,
            attempt,
            workerId: BUILTIN_WORKER_ID,
            state: "running",
            assignedAt: now,
            acceptedAt: now,
            endedAt: null,
            outcome: null,
            exitCode: null,
            lastSeq: 0,
          },
        },
      );
      if (started === null) return true;
      await holdLease(job.id, attempt);
      logger.info({ event: "job_running", jobId: job.id, attempt, builtin: true }, "job running on the built-in worker");
      void events.changed(job.id, "running");
      run(started, attempt).catch((error) => {
        running.delete(job.id);
        logger.error({ event: "builtin_run_failed", jobId: job.id, err: error }, "built-in worker failed to run a job");
      });
      return true;
    },
    async close() {
      closed = true;
      if (renewer !== null) clearInterval(renewer);
      await unsubscribe?.();
      await Promise.allSettled([...running.values()].map((entry) => entry.executor.close()));
    },
  };
}
