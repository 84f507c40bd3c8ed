// Plain records shared by the core, the stores and the planes. The stores
// return these, never ORM entities, so the scheduling core stays free of I/O
// types and the planes map them to protobuf messages in one place.

export const DEFAULT_SPACE = "default";
export const DEFAULT_POOL_NAME = "default";

export type WorkerState = "enabled" | "disabled" | "draining";

export type JobState =
  | "queued"
  | "assigned"
  | "running"
  | "succeeded"
  | "failed"
  | "cancelled"
  | "timed_out";

export const TERMINAL_JOB_STATES: ReadonlySet<JobState> = new Set([
  "succeeded",
  "failed",
  "cancelled",
  "timed_out",
]);

export type FailureReason =
  | "exit_code"
  | "no_healthy_worker"
  | "builtin_worker_disabled"
  | "worker_lost"
  | "spawn_failed"
  | "signaled";

export type PoolRule = "explicit" | "space_default" | "target_default";

export type LogStreamName = "stdout" | "stderr" | "system";

export interface WorkerPoolRecord {
  id: string;
  space: string;
  name: string;
  description: string;
  isDefault: boolean;
  createdAt: Date;
  updatedAt: Date;
  workerCount: number;
}

export interface RegistrationTokenRecord {
  id: string;
  poolId: string;
  description: string;
  prefix: string;
  createdAt: Date;
  expiresAt: Date | null;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}

/** Something steps deploy to that runs no agent (a cluster, a web app, a database). */
export interface TargetRecord {
  id: string;
  space: string;
  name: string;
  description: string;
  /** The pool its steps run in when they name no pool (or the space's default pool). */
  defaultPoolId: string | null;
  createdAt: Date;
  updatedAt: Date;
}

export interface WorkerRecord {
  id: string;
  space: string;
  poolId: string;
  name: string;
  labels: string[];
  capacity: number;
  state: WorkerState;
  hostname: string;
  agentVersion: string;
  createdAt: Date;
  /** The last Hello recorded; a Hello that repeats what is stored is recorded at most once a minute. Null until one is. */
  lastSeenAt: Date | null;
}

export interface JobRecord {
  id: string;
  space: string;
  name: string;
  script: string;
  env: Record<string, string>;
  requestedPoolId: string | null;
  /** The cloud target the job deploys to, if any. */
  targetId: string | null;
  runId: string;
  requiredLabels: string[];
  priority: number;
  exclusive: boolean;
  timeoutMs: number | null;
  queueTimeoutMs: number | null;
  maxAttempts: number;
  state: JobState;
  attempt: number;
  workerId: string | null;
  exitCode: number | null;
  failureReason: FailureReason | null;
  message: string;
  resolvedPoolId: string | null;
  poolRule: PoolRule | null;
  poolReason: string;
  workerReason: string;
  builtinWorker: boolean;
  createdAt: Date;
  startedAt: Date | null;
  endedAt: Date | null;
  /** A queued job that asked to wait fails with no_healthy_worker after this. */
  queueDeadline: Date | null;
}

/** Placement order: priority desc, created_at asc, id asc (the order of jobs_queue_index). */
export function queueOrder(a: JobRecord, b: JobRecord): number {
  if (a.priority !== b.priority) return b.priority - a.priority;
  const at = a.createdAt.getTime() - b.createdAt.getTime();
  if (at !== 0) return at;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

export type AttemptState = "assigned" | "running" | "ended";

export interface AttemptRecord {
  jobId: string;
  attempt: number;
  workerId: string;
  state: AttemptState;
  assignedAt: Date;
  acceptedAt: Date | null;
  endedAt: Date | null;
  /** Terminal job state this attempt ended with, or "worker_lost". */
  outcome: string | null;
  exitCode: number | null;
  lastSeq: number;
}

export interface LogChunkRecord {
  jobId: string;
  attempt: number;
  seq: number;
  stream: LogStreamName;
  data: Uint8Array;
  time: Date;
}
