// JobService: submit, inspect, cancel, watch and read logs of jobs.

import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Duration } from "@bufbuild/protobuf/wkt";
import { JobService } from "../../gen/muster/v1/job_pb.js";
import { TERMINAL_JOB_STATES, type JobRecord, type JobState } from "../domain.ts";
import type { Logger } from "../logger.ts";
import type { ConfigCache } from "../scheduler/config-cache.ts";
import type { JobEvents } from "../scheduler/job-events.ts";
import type { JobLifecycle } from "../scheduler/job-lifecycle.ts";
import type { JobPlacer } from "../scheduler/job-placer.ts";
import { readLogs } from "../scheduler/log-reader.ts";
import type { Database } from "../stores/database.ts";
import { JOBS_AHEAD_COUNTED, waitingReason } from "../core/placement-decision.ts";
import { mapErrors } from "./errors.ts";
import { chunkToProto, JOB_STATES, jobToProto } from "./to-proto.ts";
import * as v from "./validate.ts";

export const MAX_SCRIPT_BYTES = 1024 * 1024;
export const MAX_ENV_BYTES = 64 * 1024;
export const MAX_ENV_ENTRIES = 256;
export const MAX_REQUIRED_LABELS = 64;
export const MAX_ATTEMPTS = 10;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RUN_ID = /^[A-Za-z0-9_.:/-]{0,128}$/;

export interface JobHandlerDeps {
  db: Database;
  cache: ConfigCache;
  placer: JobPlacer;
  lifecycle: JobLifecycle;
  events: JobEvents;
  logger: Logger;
}

function tooLarge(message: string): ConnectError {
  return new ConnectError(message, Code.ResourceExhausted);
}

function durationMs(duration: Duration | undefined, field: string): number | null {
  if (duration === undefined) return null;
  const ms = Number(duration.seconds) * 1000 + Math.floor(duration.nanos / 1e6);
  if (ms < 0) throw v.invalid(`${field} must not be negative`);
  if (ms > 7 * 24 * 3600 * 1000) throw v.invalid(`${field} must be at most 7 days`);
  return ms === 0 ? null : ms;
}

const STATE_NAMES = Object.fromEntries(Object.entries(JOB_STATES).map(([name, value]) => [value, name as JobState]));

export function jobHandlers({ db, cache, placer, lifecycle, events, logger }: JobHandlerDeps): Partial<ServiceImpl<typeof JobService>> {
  async function find(rawId: string, field = "id"): Promise<JobRecord> {
    const id = v.id(rawId, field);
    const job = id === null ? null : await db.jobs.get(id);
    if (job === null) throw v.notFound("job", rawId);
    return job;
  }

  /** The job with its pool and worker names and, while it waits, how many jobs are ahead of it (counted up to JOBS_AHEAD_COUNTED). */
  async function withNames(job: JobRecord) {
    const [pool, workerName] = await Promise.all([
      job.resolvedPoolId === null ? null : cache.pool(job.resolvedPoolId),
      job.workerId === null || job.builtinWorker ? null : cache.workerName(job.workerId),
    ]);
    const message = jobToProto(job, { pool: pool?.name, worker: job.builtinWorker ? "built-in" : (workerName ?? undefined) });
    if (job.state === "queued" && pool !== null && message.placement !== undefined) {
      message.placement.workerReason = waitingReason(job.workerReason, pool.name, await db.jobs.queueDepth(pool.id, job, JOBS_AHEAD_COUNTED));
    }
    return message;
  }

  async function* watch(jobId: string, context: HandlerContext) {
    let wake: (() => void) | null = null;
    let signalled = false;
    const notify = () => {
      signalled = true;
      wake?.();
    };
    const unsubscribe = await events.onChange(jobId, notify);
    context.signal.addEventListener("abort", notify, { once: true });
    try {
      let last = "";
      for (;;) {
        signalled = false;
        const job = await db.jobs.get(jobId);
        if (job === null) return;
        const fingerprint = `${job.state}/${job.attempt}/${job.workerId}/${job.workerReason}`;
        if (fingerprint !== last) {
          last = fingerprint;
          yield { job: await withNames(job) };
        }
        if (TERMINAL_JOB_STATES.has(job.state) || context.signal.aborted) return;
        if (!signalled) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = null;
        }
      }
    } finally {
      await unsubscribe();
    }
  }

  return mapErrors(
    {
      async submitJob(request) {
        const space = v.space(request.space);
        const name = request.name.trim();
        if (name === "") throw v.invalid("name is required");
        if (name.length > 200) throw v.invalid("name is longer than 200 characters");
        if (request.script.trim() === "") throw v.invalid("script is required");
        if (Buffer.byteLength(request.script) > MAX_SCRIPT_BYTES) throw tooLarge(`script is larger than ${MAX_SCRIPT_BYTES} bytes`);
        const envEntries = Object.entries(request.env);
        if (envEntries.length > MAX_ENV_ENTRIES) throw tooLarge(`env has more than ${MAX_ENV_ENTRIES} entries`);
        let envBytes = 0;
        for (const [key, value] of envEntries) {
          if (!ENV_NAME.test(key)) throw v.invalid(`env name "${key.slice(0, 64)}" is not a valid variable name`);
          if (key.startsWith("MUSTER_")) throw v.invalid(`env name ${key} is reserved`);
          envBytes += Buffer.byteLength(key) + Buffer.byteLength(value);
        }
        if (envBytes > MAX_ENV_BYTES) throw tooLarge(`env is larger than ${MAX_ENV_BYTES} bytes`);
        if (request.requiredLabels.length > MAX_REQUIRED_LABELS) throw tooLarge(`more than ${MAX_REQUIRED_LABELS} required labels`);
        if (!RUN_ID.test(request.runId)) throw v.invalid("run_id must be at most 128 letters, digits or _.:/-");
        if (request.maxAttempts < 0 || request.maxAttempts > MAX_ATTEMPTS) throw v.invalid(`max_attempts must be between 0 and ${MAX_ATTEMPTS}`);
        if (Math.abs(request.priority) > 1000) throw v.invalid("priority must be between -1000 and 1000");
        let requestedPoolId: string | null = null;
        if (request.workerPoolId !== "") {
          requestedPoolId = v.id(request.workerPoolId, "worker_pool_id");
          if (requestedPoolId === null) throw v.notFound("worker pool", request.workerPoolId);
        }
        let targetId: string | null = null;
        if (request.targetId !== "") {
          targetId = v.id(request.targetId, "target_id");
          if (targetId === null) throw v.notFound("target", request.targetId);
        }
        const job = await placer.submit({
          space,
          name,
          script: request.script,
          env: request.env,
          requestedPoolId,
          targetId,
          runId: request.runId,
          requiredLabels: [...new Set(request.requiredLabels.map((l) => l.trim()).filter((l) => l !== ""))],
          priority: request.priority,
          exclusive: request.exclusive,
          timeoutMs: durationMs(request.timeout, "timeout"),
          queueTimeoutMs: durationMs(request.queueTimeout, "queue_timeout"),
          maxAttempts: request.maxAttempts === 0 ? 1 : request.maxAttempts,
        });
        return { job: await withNames(job) };
      },
      async getJob(request) {
        return { job: await withNames(await find(request.id)) };
      },
      async listJobs(request) {
        const space = v.space(request.space);
        const limit = request.pageSize === 0 ? 100 : request.pageSize;
        if (limit < 0 || limit > 1000) throw v.invalid("page_size must be between 0 and 1000");
        let after: string | undefined;
        if (request.pageToken !== "") {
          after = v.id(Buffer.from(request.pageToken, "base64url").toString("utf8"), "page_token") ?? undefined;
          if (after === undefined) throw v.invalid("page_token is not one this server issued");
        }
        // An id filter that cannot name anything matches no job.
        const optionalId = (raw: string, field: string): string | null | undefined => (raw === "" ? undefined : v.id(raw, field));
        const poolId = optionalId(request.workerPoolId, "worker_pool_id");
        const workerId = optionalId(request.workerId, "worker_id");
        const targetId = optionalId(request.targetId, "target_id");
        if (poolId === null || workerId === null || targetId === null) return { jobs: [], nextPageToken: "" };
        const filter = {
          space,
          poolId,
          state: request.state === 0 ? undefined : STATE_NAMES[request.state],
          runId: request.runId === "" ? undefined : request.runId,
          workerId,
          targetId,
        };
        if (request.state !== 0 && filter.state === undefined) throw v.invalid(`unknown state ${request.state}`);
        const jobs = await db.jobs.list(filter, { limit: limit + 1, after });
        const page = jobs.slice(0, limit);
        return {
          jobs: await Promise.all(page.map(withNames)),
          nextPageToken: jobs.length > limit ? Buffer.from(page[page.length - 1].id).toString("base64url") : "",
        };
      },
      async cancelJob(request) {
        const job = await find(request.id);
        const graceMs = durationMs(request.gracePeriod, "grace_period");
        return { job: await withNames(await lifecycle.cancel(job, graceMs)) };
      },
      async *watchJob(request, context) {
        const job = await find(request.id);
        yield* watch(job.id, context);
      },
      async *getJobLogs(request, context) {
        const job = await find(request.jobId, "job_id");
        if (request.attempt < 0) throw v.invalid("attempt must not be negative");
        if (request.fromSeq < 0n) throw v.invalid("from_seq must not be negative");
        for await (const chunk of readLogs(db, events, {
          jobId: job.id,
          attempt: request.attempt,
          fromSeq: Number(request.fromSeq),
          follow: request.follow,
          signal: context.signal,
        })) {
          yield { chunk: chunkToProto(chunk) };
        }
      },
    } satisfies Partial<ServiceImpl<typeof JobService>>,
    logger,
  );
}
