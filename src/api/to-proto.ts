// Plain records to API messages, in one place.

import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  FailureReason,
  JobSchema,
  JobState,
  LogStream,
  LogChunkSchema,
  PoolRule,
  type Job,
  type LogChunk,
} from "../../gen/muster/v1/job_pb.js";
import { WorkerHealth, WorkerSchema, WorkerState, type Worker } from "../../gen/muster/v1/worker_pb.js";
import { RegistrationTokenSchema, WorkerPoolSchema, type RegistrationToken, type WorkerPool } from "../../gen/muster/v1/worker_pool_pb.js";
import type {
  JobRecord,
  JobState as JobStateName,
  LogChunkRecord,
  RegistrationTokenRecord,
  WorkerPoolRecord,
  WorkerRecord,
} from "../domain.ts";
import type { WorkerLiveStatus } from "../stores/lease-store.ts";

const ts = (date: Date | null) => (date === null ? undefined : timestampFromDate(date));

export function poolToProto(pool: WorkerPoolRecord): WorkerPool {
  return create(WorkerPoolSchema, {
    id: pool.id,
    space: pool.space,
    name: pool.name,
    description: pool.description,
    isDefault: pool.isDefault,
    createTime: ts(pool.createdAt),
    updateTime: ts(pool.updatedAt),
    workerCount: pool.workerCount,
  });
}

export function tokenToProto(token: RegistrationTokenRecord): RegistrationToken {
  return create(RegistrationTokenSchema, {
    id: token.id,
    workerPoolId: token.poolId,
    description: token.description,
    prefix: token.prefix,
    createTime: ts(token.createdAt),
    expireTime: ts(token.expiresAt),
    lastUsedTime: ts(token.lastUsedAt),
    revokeTime: ts(token.revokedAt),
  });
}

const WORKER_STATES = { enabled: WorkerState.ENABLED, disabled: WorkerState.DISABLED, draining: WorkerState.DRAINING } as const;

export function workerHealth(worker: WorkerRecord, live: WorkerLiveStatus | undefined): WorkerHealth {
  if (live === undefined || !live.attached || !live.fresh) return WorkerHealth.UNREACHABLE;
  return worker.state === "enabled" ? WorkerHealth.HEALTHY : WorkerHealth.DISABLED;
}

export function workerToProto(worker: WorkerRecord, live: WorkerLiveStatus | undefined): Worker {
  return create(WorkerSchema, {
    id: worker.id,
    space: worker.space,
    workerPoolId: worker.poolId,
    name: worker.name,
    labels: worker.labels,
    capacity: worker.capacity,
    state: WORKER_STATES[worker.state],
    health: workerHealth(worker, live),
    activeLeases: live?.activeLeases ?? 0,
    lastHeartbeatTime: live?.lastHeartbeatMs == null ? undefined : timestampFromDate(new Date(live.lastHeartbeatMs)),
    createTime: ts(worker.createdAt),
    hostname: worker.hostname,
    agentVersion: worker.agentVersion,
    connected: live?.attached ?? false,
  });
}

export const JOB_STATES: Record<JobStateName, JobState> = {
  queued: JobState.QUEUED,
  assigned: JobState.ASSIGNED,
  running: JobState.RUNNING,
  succeeded: JobState.SUCCEEDED,
  failed: JobState.FAILED,
  cancelled: JobState.CANCELLED,
  timed_out: JobState.TIMED_OUT,
};

const FAILURES = {
  exit_code: FailureReason.EXIT_CODE,
  no_healthy_worker: FailureReason.NO_HEALTHY_WORKER,
  builtin_worker_disabled: FailureReason.BUILTIN_WORKER_DISABLED,
  worker_lost: FailureReason.WORKER_LOST,
  spawn_failed: FailureReason.SPAWN_FAILED,
  signaled: FailureReason.SIGNALED,
} as const;

const RULES = {
  explicit: PoolRule.EXPLICIT,
  space_default: PoolRule.SPACE_DEFAULT,
  target_default: PoolRule.TARGET_DEFAULT,
} as const;

export function jobToProto(job: JobRecord, names: { pool?: string; worker?: string } = {}): Job {
  return create(JobSchema, {
    id: job.id,
    space: job.space,
    name: job.name,
    script: job.script,
    requestedWorkerPoolId: job.requestedPoolId ?? "",
    targetId: job.targetId ?? "",
    exclusive: job.exclusive,
    runId: job.runId,
    env: job.env,
    requiredLabels: job.requiredLabels,
    state: JOB_STATES[job.state],
    attempt: job.attempt,
    maxAttempts: job.maxAttempts,
    workerId: job.workerId ?? "",
    exitCode: job.exitCode ?? undefined,
    failureReason: job.failureReason === null ? FailureReason.UNSPECIFIED : FAILURES[job.failureReason],
    message: job.message,
    placement: {
      resolvedWorkerPoolId: job.resolvedPoolId ?? "",
      resolvedWorkerPoolName: names.pool ?? "",
      poolRule: job.poolRule === null ? PoolRule.UNSPECIFIED : RULES[job.poolRule],
      poolReason: job.poolReason,
      workerId: job.workerId ?? "",
      workerName: names.worker ?? "",
      workerReason: job.workerReason,
      builtinWorker: job.builtinWorker,
    },
    createTime: ts(job.createdAt),
    startTime: ts(job.startedAt),
    endTime: ts(job.endedAt),
    timeout: job.timeoutMs === null ? undefined : durationFromMs(job.timeoutMs),
    queueTimeout: job.queueTimeoutMs === null ? undefined : durationFromMs(job.queueTimeoutMs),
    priority: job.priority,
  });
}

const STREAMS = { stdout: LogStream.STDOUT, stderr: LogStream.STDERR, system: LogStream.SYSTEM } as const;

export function chunkToProto(chunk: LogChunkRecord): LogChunk {
  return create(LogChunkSchema, {
    attempt: chunk.attempt,
    seq: BigInt(chunk.seq),
    stream: STREAMS[chunk.stream],
    data: chunk.data,
    time: timestampFromDate(chunk.time),
  });
}
