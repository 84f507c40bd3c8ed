// Jobs and their attempts.
//
// `transition` is the fence that keeps stale attempts from writing: the job
// row is changed by one conditional UPDATE, and the attempt change rides in
// the same transaction only if that UPDATE matched. The hot paths here are
// single statements built with the QueryBuilder and read back as plain rows,
// never loaded into an identity map.

import { LockMode } from "@mikro-orm/core";
import type { QBFilterQuery, SqlEntityManager } from "@mikro-orm/postgresql";
import type { AttemptRecord, JobRecord } from "../../domain.ts";
import type { AttemptChange, Database, JobFence, JobPatch, NewJob } from "../database.ts";
import { JobAttemptEntity, type JobAttemptRow } from "./entities/job-attempt.ts";
import { JobEntity, type JobRow } from "./entities/job.ts";
import { mapConstraintError, type StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

type JobWhere = QBFilterQuery<JobRow>;

export function createJobRepository(ctx: StoreContext): Database["jobs"] {
  const selectJobs = (em: SqlEntityManager, where: JobWhere) => em.qb(JobEntity, "j").select("*").where(where);

  const fenceWhere = (jobId: string, fence: JobFence): JobWhere => {
    const where: JobWhere = { id: jobId, state: { $in: fence.states } };
    if (fence.attempt !== undefined) where.attempt = fence.attempt;
    if (fence.workerId !== undefined) where.workerId = fence.workerId;
    return where;
  };

  const applyTransition = async (
    em: SqlEntityManager,
    where: JobWhere,
    patch: JobPatch,
    attempt: AttemptChange | undefined,
  ): Promise<JobRecord | null> => {
    const changes = definedOnly(patch);
    let row: JobRow | undefined;
    if (Object.keys(changes).length === 0) {
      // Nothing to change on the job: lock it so the fence holds until commit.
      row = (await selectJobs(em, where).setLockMode(LockMode.PESSIMISTIC_WRITE).execute("get")) as JobRow | undefined;
    } else {
      const rows = await em.qb(JobEntity).update(changes).where(where).returning("*").execute("all");
      row = rows[0] as JobRow | undefined;
    }
    if (!row) return null;
    if (attempt?.insert) {
      try {
        await em.qb(JobAttemptEntity).insert(toAttemptRow(attempt.insert)).execute("run");
      } catch (error) {
        throw mapConstraintError(error, `attempt ${attempt.insert.attempt} of job ${attempt.insert.jobId}`);
      }
    }
    if (attempt?.update) {
      const attemptChanges = definedOnly(attempt.update.patch);
      if (Object.keys(attemptChanges).length > 0) {
        await em.nativeUpdate(JobAttemptEntity, { job: row.id, attempt: attempt.update.attempt }, attemptChanges);
      }
    }
    return toJobRecord(row);
  };

  return {
    async create(job) {
      const record = newJobRecord(job);
      try {
        await ctx.fork().qb(JobEntity).insert(record).execute("run");
      } catch (error) {
        throw mapConstraintError(error, `job ${job.id}`);
      }
      return record;
    },

    async get(id) {
      if (!isUuid(id)) return null;
      const row = await selectJobs(ctx.fork(), { id }).execute("get");
      return row ? toJobRecord(row as JobRow) : null;
    },

    async list(filter, page) {
      const where: JobWhere = { space: filter.space };
      for (const id of [filter.poolId, filter.workerId, filter.targetId, page.after]) {
        if (id !== undefined && !isUuid(id)) return [];
      }
      if (filter.poolId !== undefined) where.resolvedPoolId = filter.poolId;
      if (filter.state !== undefined) where.state = filter.state;
      if (filter.runId !== undefined) where.runId = filter.runId;
      if (filter.workerId !== undefined) where.workerId = filter.workerId;
      if (filter.targetId !== undefined) where.targetId = filter.targetId;
      const qb = selectJobs(ctx.fork(), where)
        .orderBy([{ createdAt: "desc" }, { id: "desc" }])
        .limit(page.limit);
      if (page.after !== undefined) {
        // Keyset: strictly after the previous page's last row in (created_at, id) order.
        qb.andWhere(
          `(j.created_at, j.id) < (select p.created_at, p.id from ${ctx.table("jobs")} p where p.id = ?)`,
          [page.after],
        );
      }
      const rows = await qb.execute("all");
      return (rows as JobRow[]).map(toJobRecord);
    },

    async transition(jobId, fence, patch, attempt) {
      if (!isUuid(jobId) || fence.states.length === 0) return null;
      const where = fenceWhere(jobId, fence);
      if (!attempt?.insert && !attempt?.update) {
        // One UPDATE is atomic on its own; no transaction round trips.
        return applyTransition(ctx.fork(), where, patch, undefined);
      }
      return ctx.fork().transactional((tx) => applyTransition(tx, where, patch, attempt));
    },

    async queued(poolId, limit, after) {
      if (!isUuid(poolId)) return [];
      const where: JobWhere = { resolvedPoolId: poolId, state: "queued" };
      if (after) {
        // Placed after `after` in the queue order: priority desc, created_at asc, id asc.
        where.$or = [
          { priority: { $lt: after.priority } },
          { priority: after.priority, createdAt: { $gt: after.createdAt } },
          { priority: after.priority, createdAt: after.createdAt, id: { $gt: after.id } },
        ];
      }
      const rows = await selectJobs(ctx.fork(), where)
        .orderBy([{ priority: "desc" }, { createdAt: "asc" }, { id: "asc" }])
        .limit(limit)
        .execute("all");
      return (rows as JobRow[]).map(toJobRecord);
    },

    async queueDepth(poolId, before) {
      if (!isUuid(poolId)) return 0;
      const where: JobWhere = { resolvedPoolId: poolId, state: "queued" };
      if (before) {
        // "Placed before" in the order of `queued`: priority desc, created_at asc, id asc.
        where.$or = [
          { priority: { $gt: before.priority } },
          { priority: before.priority, createdAt: { $lt: before.createdAt } },
          { priority: before.priority, createdAt: before.createdAt, id: { $lt: before.id } },
        ];
      }
      return ctx.fork().count(JobEntity, where);
    },

    async queueStats(poolId) {
      if (!isUuid(poolId)) return { queued: 0, oldestQueuedAt: null };
      // Same predicate as the partial index jobs_queue_index, whose columns
      // (resolved_pool_id, ..., created_at) answer this from the index alone.
      const [row] = await ctx
        .fork()
        .execute<{ queued: number; oldest: Date | string | null }[]>(
          `select count(*)::int as queued, min(created_at) as oldest from ${ctx.table("jobs")} where resolved_pool_id = ? and state = 'queued'`,
          [poolId],
        );
      const oldest = row?.oldest ?? null;
      return {
        queued: Number(row?.queued ?? 0),
        oldestQueuedAt: oldest === null ? null : oldest instanceof Date ? oldest : new Date(oldest),
      };
    },

    async poolsWithQueuedJobs() {
      const rows = await ctx
        .fork()
        .qb(JobEntity)
        .select(["resolvedPoolId"], true)
        .where({ state: "queued", resolvedPoolId: { $ne: null } })
        .execute("all");
      return rows.map((row) => row.resolvedPoolId as string);
    },

    async queueExpired(now, limit) {
      const rows = await selectJobs(ctx.fork(), { state: "queued", queueDeadline: { $lt: now } })
        .orderBy([{ queueDeadline: "asc" }, { id: "asc" }])
        .limit(limit)
        .execute("all");
      return (rows as JobRow[]).map(toJobRecord);
    },

    async attempts(jobId) {
      if (!isUuid(jobId)) return [];
      return selectAttempts(ctx.fork(), { job: jobId });
    },

    async liveAttempts() {
      // `<> 'ended'` rather than `in ('assigned', 'running')`: the same rows,
      // phrased as the predicate of the partial index job_attempts_live_index.
      return selectAttempts(ctx.fork(), { state: { $ne: "ended" } });
    },

    async liveAttemptsOfWorker(workerId) {
      if (!isUuid(workerId)) return [];
      return selectAttempts(ctx.fork(), { workerId, state: { $ne: "ended" } });
    },
  };
}

async function selectAttempts(em: SqlEntityManager, where: QBFilterQuery<JobAttemptRow>): Promise<AttemptRecord[]> {
  const rows = await em
    .qb(JobAttemptEntity)
    .select("*")
    .where(where)
    .orderBy([{ job: "asc" }, { attempt: "asc" }])
    .execute("all");
  return (rows as JobAttemptRow[]).map(toAttemptRecord);
}

function newJobRecord(job: NewJob): JobRecord {
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

function toJobRecord(row: JobRow): JobRecord {
  return {
    id: row.id,
    space: row.space,
    name: row.name,
    script: row.script,
    env: row.env,
    requestedPoolId: row.requestedPoolId ?? null,
    targetId: row.targetId ?? null,
    runId: row.runId,
    requiredLabels: row.requiredLabels,
    priority: row.priority,
    exclusive: row.exclusive,
    // bigint columns come back from raw rows as strings.
    timeoutMs: numberOrNull(row.timeoutMs),
    queueTimeoutMs: numberOrNull(row.queueTimeoutMs),
    maxAttempts: row.maxAttempts,
    state: row.state,
    attempt: row.attempt,
    workerId: row.workerId ?? null,
    exitCode: row.exitCode ?? null,
    failureReason: row.failureReason ?? null,
    message: row.message,
    resolvedPoolId: row.resolvedPoolId ?? null,
    poolRule: row.poolRule ?? null,
    poolReason: row.poolReason,
    workerReason: row.workerReason,
    builtinWorker: row.builtinWorker,
    createdAt: row.createdAt,
    startedAt: row.startedAt ?? null,
    endedAt: row.endedAt ?? null,
    queueDeadline: row.queueDeadline ?? null,
  };
}

function toAttemptRow(record: AttemptRecord): JobAttemptRow {
  return {
    job: record.jobId,
    attempt: record.attempt,
    workerId: record.workerId,
    state: record.state,
    assignedAt: record.assignedAt,
    acceptedAt: record.acceptedAt,
    endedAt: record.endedAt,
    outcome: record.outcome,
    exitCode: record.exitCode,
    lastSeq: record.lastSeq,
  };
}

function toAttemptRecord(row: JobAttemptRow): AttemptRecord {
  return {
    jobId: row.job,
    attempt: row.attempt,
    workerId: row.workerId,
    state: row.state,
    assignedAt: row.assignedAt,
    acceptedAt: row.acceptedAt ?? null,
    endedAt: row.endedAt ?? null,
    outcome: row.outcome ?? null,
    exitCode: row.exitCode ?? null,
    lastSeq: row.lastSeq,
  };
}

function numberOrNull(value: number | string | null | undefined): number | null {
  return value === null || value === undefined ? null : Number(value);
}

/** The patch without its undefined fields, which mean "leave as is". */
function definedOnly<T extends object>(patch: T): Partial<T> {
  return Object.fromEntries(Object.entries(patch).filter(([, value]) => value !== undefined)) as Partial<T>;
}
