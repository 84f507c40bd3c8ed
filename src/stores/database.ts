// The source-of-truth contract, kept by src/stores/postgres (MikroORM 7 on
// PostgreSQL, or on PGlite for the embedded default). Methods return plain
// records from src/domain.ts. Every method forks its own EntityManager; none
// shares the global one.

import type {
  AttemptRecord,
  JobRecord,
  JobState,
  LogChunkRecord,
  RegistrationTokenRecord,
  TargetRecord,
  WorkerPoolRecord,
  WorkerRecord,
  WorkerState,
} from "../domain.ts";

/** A unique name (pool in a space) is already taken. */
export class AlreadyExistsError extends Error {
  override name = "AlreadyExistsError";
}

/** The operation is refused in the current state (default pool, pool with workers, ...). */
export class PreconditionError extends Error {
  override name = "PreconditionError";
}

/** What a submission fixes about a job; the rest of JobRecord starts at its defaults. */
export type NewJob = Pick<
  JobRecord,
  | "id"
  | "space"
  | "name"
  | "script"
  | "env"
  | "requestedPoolId"
  | "targetId"
  | "runId"
  | "requiredLabels"
  | "priority"
  | "exclusive"
  | "timeoutMs"
  | "queueTimeoutMs"
  | "maxAttempts"
  | "resolvedPoolId"
  | "poolRule"
  | "poolReason"
  | "queueDeadline"
  | "createdAt"
>;

/** Conditions a job row must meet for a transition to apply. */
export interface JobFence {
  states: JobState[];
  attempt?: number;
  workerId?: string;
}

export type JobPatch = Partial<
  Pick<
    JobRecord,
    | "state"
    | "attempt"
    | "workerId"
    | "exitCode"
    | "failureReason"
    | "message"
    | "resolvedPoolId"
    | "poolRule"
    | "poolReason"
    | "workerReason"
    | "builtinWorker"
    | "startedAt"
    | "endedAt"
    | "queueDeadline"
  >
>;

export interface AttemptChange {
  /** Insert a new attempt row in the same transaction. */
  insert?: AttemptRecord;
  /** Update an existing attempt row in the same transaction. */
  update?: { attempt: number; patch: Partial<Omit<AttemptRecord, "jobId" | "attempt">> };
}

export interface JobFilter {
  space: string;
  poolId?: string;
  state?: JobState;
  runId?: string;
  workerId?: string;
  targetId?: string;
}

export interface Database {
  close(): Promise<void>;

  /** Creates the space and its default pool if missing; returns the default pool. Safe under concurrency. */
  ensureSpace(space: string): Promise<WorkerPoolRecord>;

  pools: {
    /** Throws AlreadyExistsError if the name is taken in the space. */
    create(input: { space: string; name: string; description: string }): Promise<WorkerPoolRecord>;
    get(id: string): Promise<WorkerPoolRecord | null>;
    list(space: string): Promise<WorkerPoolRecord[]>;
    defaultPool(space: string): Promise<WorkerPoolRecord | null>;
    /** Null if not found; AlreadyExistsError on a taken name. */
    update(id: string, patch: { name?: string; description?: string }): Promise<WorkerPoolRecord | null>;
    /**
     * False if not found. PreconditionError for the default pool; for a pool
     * with workers unless `force` (then its workers are deleted too); and for
     * a pool that targets name as their default pool unless
     * `clearTargetDefaults` (then those targets' default pool is cleared in
     * the same transaction). The PreconditionError message names the targets.
     */
    delete(id: string, options: { force: boolean; clearTargetDefaults?: boolean }): Promise<boolean>;
    /** Makes the pool its space's only default in one transaction; null if not found. */
    setDefault(id: string): Promise<WorkerPoolRecord | null>;
  };

  tokens: {
    create(input: {
      poolId: string;
      description: string;
      secretHash: string;
      prefix: string;
      expiresAt: Date | null;
    }): Promise<RegistrationTokenRecord>;
    list(poolId: string): Promise<RegistrationTokenRecord[]>;
    /** Null if not found. Revoking twice keeps the first revoke time. */
    revoke(id: string, now: Date): Promise<RegistrationTokenRecord | null>;
    /**
     * The token with this hash if it is neither revoked nor expired at `now`;
     * records `now` as its last use. Null otherwise.
     */
    use(secretHash: string, now: Date): Promise<RegistrationTokenRecord | null>;
  };

  targets: {
    /**
     * AlreadyExistsError if the name is taken in the space; PreconditionError
     * if defaultPoolId is not a pool of the same space.
     */
    create(input: { space: string; name: string; description: string; defaultPoolId: string | null }): Promise<TargetRecord>;
    get(id: string): Promise<TargetRecord | null>;
    /** By name. */
    list(space: string): Promise<TargetRecord[]>;
    /** Null if not found; `defaultPoolId: null` clears it; same errors as create. */
    update(id: string, patch: { name?: string; description?: string; defaultPoolId?: string | null }): Promise<TargetRecord | null>;
    delete(id: string): Promise<boolean>;
  };

  workers: {
    create(input: {
      space: string;
      poolId: string;
      name: string;
      labels: string[];
      capacity: number;
      credentialHash: string;
      hostname: string;
      agentVersion: string;
    }): Promise<WorkerRecord>;
    get(id: string): Promise<WorkerRecord | null>;
    /** Newest first. */
    list(space: string, poolId?: string): Promise<WorkerRecord[]>;
    byCredentialHash(credentialHash: string): Promise<WorkerRecord | null>;
    setState(id: string, state: WorkerState): Promise<WorkerRecord | null>;
    /** What the agent announced in Hello, and when. */
    recordHello(
      id: string,
      hello: { labels: string[]; capacity: number; hostname: string; agentVersion: string },
      now: Date,
    ): Promise<WorkerRecord | null>;
    delete(id: string): Promise<boolean>;
    countInPool(poolId: string): Promise<number>;
  };

  jobs: {
    /**
     * Inserts the job, queued. With `initial`, it is inserted as already
     * decided (placed: assigned with its first attempt row; or failed), in
     * the same statement, so a job placed at submit costs one commit.
     */
    create(job: NewJob, initial?: { patch: JobPatch; attempt?: AttemptRecord }): Promise<JobRecord>;
    get(id: string): Promise<JobRecord | null>;
    /** Newest first (created_at desc, id desc); `after` is the last id of the previous page. */
    list(filter: JobFilter, page: { limit: number; after?: string }): Promise<JobRecord[]>;
    /**
     * Applies `patch` only if the job meets `fence`, together with the attempt
     * change, in one transaction. Returns the updated job, or null (nothing
     * written) if the fence did not hold.
     */
    transition(jobId: string, fence: JobFence, patch: JobPatch, attempt?: AttemptChange): Promise<JobRecord | null>;
    /** Queued jobs of a pool in placement order (priority desc, created_at asc, id asc), after `after` if given. */
    queued(poolId: string, limit: number, after?: JobRecord): Promise<JobRecord[]>;
    /**
     * Number of queued jobs of a pool ahead of (placed before) the given job,
     * or all of them if omitted; counting stops at `atMost` if given.
     */
    queueDepth(poolId: string, before?: JobRecord, atMost?: number): Promise<number>;
    /** How many jobs of the pool are queued, and since when the oldest waits. */
    queueStats(poolId: string): Promise<{ queued: number; oldestQueuedAt: Date | null }>;
    /** Pools that have queued jobs. */
    poolsWithQueuedJobs(): Promise<string[]>;
    /** Queued jobs whose queue deadline is before `now`. */
    queueExpired(now: Date, limit: number): Promise<JobRecord[]>;
    /**
     * Queued jobs of a pool that are not waiting for a healthy worker: no
     * queue deadline, or one at or before `now`. At most `limit` of them, not
     * necessarily the first in the queue; in queue order among themselves.
     */
    queuedNotWaiting(poolId: string, now: Date, limit: number): Promise<JobRecord[]>;
    attempts(jobId: string): Promise<AttemptRecord[]>;
    /** Attempts in state assigned or running (their leases should exist). */
    liveAttempts(): Promise<AttemptRecord[]>;
    liveAttemptsOfWorker(workerId: string): Promise<AttemptRecord[]>;
  };

  logs: {
    /** Inserts chunks; a chunk whose (job, attempt, seq) exists is skipped. Returns how many were new. */
    append(chunks: LogChunkRecord[]): Promise<number>;
    /** Chunks with seq >= fromSeq in seq order, at most `limit`. */
    read(jobId: string, attempt: number, fromSeq: number, limit: number): Promise<LogChunkRecord[]>;
    /** Highest seq stored for the attempt, 0 if none. */
    maxSeq(jobId: string, attempt: number): Promise<number>;
  };
}

/** A new job as its row reads once inserted queued. */
export function queuedJobRecord(job: NewJob): JobRecord {
  return {
    id: job.id,
    space: job.space,
    name: job.name,
    script: job.script,
    env: { ...job.env },
    requestedPoolId: job.requestedPoolId,
    targetId: job.targetId,
    runId: job.runId,
    requiredLabels: [...job.requiredLabels],
    priority: job.priority,
    exclusive: job.exclusive,
    timeoutMs: job.timeoutMs,
    queueTimeoutMs: job.queueTimeoutMs,
    maxAttempts: job.maxAttempts,
    state: "queued",
    attempt: 0,
    workerId: null,
    exitCode: null,
    failureReason: null,
    message: "",
    resolvedPoolId: job.resolvedPoolId,
    poolRule: job.poolRule,
    poolReason: job.poolReason,
    workerReason: "",
    builtinWorker: false,
    createdAt: job.createdAt,
    startedAt: null,
    endedAt: null,
    queueDeadline: job.queueDeadline,
  };
}
