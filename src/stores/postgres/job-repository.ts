// Jobs and their attempts.
//
// `transition` is the fence that keeps stale attempts from writing: the job
// row is changed by one conditional UPDATE, and the attempt change rides in
// the same statement (a data-modifying CTE over the UPDATE's RETURNING) so it
// happens only if that UPDATE matched. One statement is atomic on its own: no
// BEGIN/COMMIT round trips, and a failing attempt insert (a duplicate) leaves
// the job untouched.
//
// Transitions and inserts made in one turn of the event loop share one
// statement (see job-batches.ts, which builds the transition statement for
// one job or many); a lone job insert runs the plain INSERT below.
//
// Every statement here is raw SQL with bound parameters, run straight on the
// driver (ctx.query) and mapped to records by hand: these are the scheduler's
// hot paths, and MikroORM's QueryBuilder costs far more CPU than the query.

import { queueOrder, type AttemptRecord, type JobRecord } from "../../domain.ts";
import { queuedJobRecord, type Database } from "../database.ts";
import {
  composeTransitions,
  createBatcher,
  definedOnly,
  normalizeTransition,
  transitionBatchStatement,
  transitionShape,
  type TransitionItem,
} from "./job-batches.ts";
import { createBatchedLookup } from "./batched-lookup.ts";
import { toDate, toDateOrNull, toNumberOrNull } from "./raw-values.ts";
import { mapConstraintError, type StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

/** A jobs row as the drivers return it (see raw-values.ts for the per-driver types). */
interface JobDbRow {
  id: string;
  space: string;
  name: string;
  script: string;
  env: Record<string, string>;
  requested_pool_id: string | null;
  target_id: string | null;
  run_id: string;
  required_labels: string[];
  priority: number;
  exclusive: boolean;
  timeout_ms: string | number | null;
  queue_timeout_ms: string | number | null;
  max_attempts: number;
  state: JobRecord["state"];
  attempt: number;
  worker_id: string | null;
  exit_code: number | null;
  failure_reason: JobRecord["failureReason"];
  message: string;
  resolved_pool_id: string | null;
  pool_rule: JobRecord["poolRule"];
  pool_reason: string;
  worker_reason: string;
  builtin_worker: boolean;
  created_at: string | Date;
  started_at: string | Date | null;
  ended_at: string | Date | null;
  queue_deadline: string | Date | null;
}

interface AttemptDbRow {
  job_id: string;
  attempt: number;
  worker_id: string;
  state: AttemptRecord["state"];
  assigned_at: string | Date;
  accepted_at: string | Date | null;
  ended_at: string | Date | null;
  outcome: string | null;
  exit_code: number | null;
  last_seq: number;
}

/** The jobs columns a new job is inserted with: column, SQL type, field. */
const INSERT_COLUMNS: ReadonlyArray<readonly [string, string, keyof JobRecord]> = [
  ["id", "uuid", "id"],
  ["space", "text", "space"],
  ["name", "text", "name"],
  ["script", "text", "script"],
  ["env", "jsonb", "env"],
  ["requested_pool_id", "uuid", "requestedPoolId"],
  ["target_id", "uuid", "targetId"],
  ["run_id", "text", "runId"],
  ["required_labels", "text[]", "requiredLabels"],
  ["priority", "int", "priority"],
  ["exclusive", "boolean", "exclusive"],
  ["timeout_ms", "bigint", "timeoutMs"],
  ["queue_timeout_ms", "bigint", "queueTimeoutMs"],
  ["max_attempts", "int", "maxAttempts"],
  ["state", "text", "state"],
  ["attempt", "int", "attempt"],
  ["worker_id", "uuid", "workerId"],
  ["exit_code", "int", "exitCode"],
  ["failure_reason", "text", "failureReason"],
  ["message", "text", "message"],
  ["resolved_pool_id", "uuid", "resolvedPoolId"],
  ["pool_rule", "text", "poolRule"],
  ["pool_reason", "text", "poolReason"],
  ["worker_reason", "text", "workerReason"],
  ["builtin_worker", "boolean", "builtinWorker"],
  ["created_at", "timestamptz", "createdAt"],
  ["started_at", "timestamptz", "startedAt"],
  ["ended_at", "timestamptz", "endedAt"],
  ["queue_deadline", "timestamptz", "queueDeadline"],
];

/** The job_attempts columns, with their SQL types and fields, for inserts read from JSON. */
const ATTEMPT_RECORDSET: ReadonlyArray<readonly [string, string, keyof AttemptRecord]> = [
  ["job_id", "uuid", "jobId"],
  ["attempt", "int", "attempt"],
  ["worker_id", "uuid", "workerId"],
  ["state", "text", "state"],
  ["assigned_at", "timestamptz", "assignedAt"],
  ["accepted_at", "timestamptz", "acceptedAt"],
  ["ended_at", "timestamptz", "endedAt"],
  ["outcome", "text", "outcome"],
  ["exit_code", "int", "exitCode"],
  ["last_seq", "int", "lastSeq"],
];

/** A job to insert, and its first attempt when it is inserted already placed. */
interface NewJobItem {
  record: JobRecord;
  attempt: AttemptRecord | undefined;
}

/**
 * Queued jobs of a pool ($1) without a queue deadline or past it ($2), at
 * most $3: one range of jobs_pool_queue_deadline_index (no deadline reads as
 * -infinity), so neither the pool's jobs still waiting nor other pools' jobs
 * are read.
 */
export function queuedNotWaitingStatement(jobsTable: string): string {
  const deadline = "coalesce(queue_deadline, '-infinity'::timestamptz)";
  return `select * from ${jobsTable} where resolved_pool_id = $1 and state = 'queued' and ${deadline} <= $2 order by ${deadline} limit $3`;
}

/**
 * Counts a pool's queued jobs ($1), up to $2 (null: all); `before`: only
 * those ahead of the job with priority $3, created_at $4 and id $5. Each part
 * reads one range of jobs_queue_index in its order and stops at the limit, so
 * a count costs what it counts, capped, however long the queue behind the job
 * is (one OR of the two conditions would filter the pool's whole queue). The
 * parts may together count up to twice the limit; the caller caps the sum.
 */
export function queueDepthStatement(jobs: string, before: boolean): string {
  const rows = `select 1 from ${jobs} where resolved_pool_id = $1 and state = 'queued'`;
  const order = "order by priority desc, created_at asc, id asc limit $2";
  if (!before) return `select count(*)::int as n from (${rows} ${order}) ahead`;
  return (
    `select count(*)::int as n from ((${rows} and priority > $3 ${order}) union all ` +
    `(${rows} and priority = $3 and (created_at, id) < ($4, $5) ${order})) ahead`
  );
}

export function createJobRepository(ctx: StoreContext): Database["jobs"] {
  const jobs = ctx.table("jobs");
  const attempts = ctx.table("job_attempts");

  const insertColumns = INSERT_COLUMNS.map(([column]) => column).join(", ");
  const insertJobSql =
    `insert into ${jobs} (${insertColumns}) values ` +
    `(${INSERT_COLUMNS.map(([, type], n) => `$${n + 1}${type === "jsonb" || type === "text[]" ? `::${type}` : ""}`).join(", ")})`;

  // Reads of single jobs made at once (submitters reading back jobs that
  // were queued behind a backlog, watchers, the API) share one statement.
  const getJobsSql = `select * from ${jobs} where id = any($1::uuid[])`;
  // Placement order: priority desc, created_at asc, id asc (the order of jobs_queue_index).
  const queuedSql = `select * from ${jobs} where resolved_pool_id = $1 and state = 'queued' order by priority desc, created_at asc, id asc limit $2`;
  const queuedAfterSql =
    `select * from ${jobs} where resolved_pool_id = $1 and state = 'queued' and ` +
    "(priority < $3 or (priority = $3 and (created_at > $4 or (created_at = $4 and id > $5)))) " +
    "order by priority desc, created_at asc, id asc limit $2";
  const depthSql = queueDepthStatement(jobs, false);
  const depthBeforeSql = queueDepthStatement(jobs, true);
  // Same predicate as the partial index jobs_queue_index, whose columns
  // (resolved_pool_id, ..., created_at) answer this from the index alone.
  const statsSql = `select count(*)::int as queued, min(created_at) as oldest from ${jobs} where resolved_pool_id = $1 and state = 'queued'`;
  const poolsWithQueuedSql = `select distinct resolved_pool_id from ${jobs} where state = 'queued' and resolved_pool_id is not null`;
  const queueExpiredSql = `select * from ${jobs} where state = 'queued' and queue_deadline < $1 order by queue_deadline asc, id asc limit $2`;
  const queuedNotWaitingSql = queuedNotWaitingStatement(jobs);
  const attemptsOrder = "order by job_id asc, attempt asc";
  const attemptsSql = `select * from ${attempts} where job_id = $1 ${attemptsOrder}`;
  // `<> 'ended'` rather than `in ('assigned', 'running')`: the same rows,
  // phrased as the predicate of the partial index job_attempts_live_index.
  const liveAttemptsSql = `select * from ${attempts} where state <> 'ended' ${attemptsOrder}`;
  const liveAttemptsOfWorkerSql = `select * from ${attempts} where worker_id = $1 and state <> 'ended' ${attemptsOrder}`;

  const selectJobs = async (sql: string, params: unknown[]): Promise<JobRecord[]> => {
    const { rows } = await ctx.query<JobDbRow>(sql, params);
    return rows.map(toJobRecord);
  };
  const jobLookup = createBatchedLookup<string, JobRecord | null>({
    id: (id) => id,
    missing: null,
    fetch: async (ids) => new Map((await selectJobs(getJobsSql, [ids])).map((job) => [job.id, job])),
  });
  const selectAttempts = async (sql: string, params: unknown[]): Promise<AttemptRecord[]> => {
    const { rows } = await ctx.query<AttemptDbRow>(sql, params);
    return rows.map(toAttemptRecord);
  };

  /** One job, one INSERT. */
  const insertOne = async (record: JobRecord): Promise<JobRecord> => {
    try {
      await ctx.query(insertJobSql, INSERT_COLUMNS.map(([, , field]) => jobParam(field, record[field])));
    } catch (error) {
      throw mapConstraintError(error, `job ${record.id}`);
    }
    return record;
  };

  // Several jobs, one INSERT: the same columns, read from one JSON parameter;
  // jobs inserted already placed bring their attempt rows in the same statement.
  const recordsetColumns = `${INSERT_COLUMNS.map(([column, type]) => `${column} ${type}`).join(", ")}`;
  const insertManySql = `insert into ${jobs} (${insertColumns}) select ${insertColumns} from jsonb_to_recordset($1::jsonb) as r(${recordsetColumns})`;
  const attemptColumns = ATTEMPT_RECORDSET.map(([column]) => column).join(", ");
  const insertPlacedSql =
    `with r as (${insertManySql} returning 1) insert into ${attempts} (${attemptColumns}) ` +
    `select ${attemptColumns} from jsonb_to_recordset($2::jsonb) as a(${ATTEMPT_RECORDSET.map(([column, type]) => `${column} ${type}`).join(", ")})`;
  const jobRows = (items: NewJobItem[]) =>
    JSON.stringify(
      items.map(({ record }) => {
        const row: Record<string, unknown> = {};
        for (const [column, , field] of INSERT_COLUMNS) row[column] = record[field];
        return row;
      }),
    );
  const insertMany = async (items: NewJobItem[]): Promise<JobRecord[]> => {
    const placed = items.filter((item) => item.attempt !== undefined);
    if (placed.length === 0) {
      await ctx.query(insertManySql, [jobRows(items)]);
    } else {
      const attemptRows = placed.map(({ attempt }) => {
        const row: Record<string, unknown> = {};
        for (const [column, , field] of ATTEMPT_RECORDSET) row[column] = attempt![field];
        return row;
      });
      await ctx.query(insertPlacedSql, [jobRows(items), JSON.stringify(attemptRows)]);
    }
    return items.map((item) => item.record);
  };
  const batchedCreate = createBatcher<NewJobItem, JobRecord>({
    // Jobs with and without an attempt row take different statements.
    shape: (item) => (item.attempt === undefined ? "queued" : "placed"),
    identity: (item) => item.record.id.toLowerCase(),
    async one(item) {
      try {
        if (item.attempt === undefined) return await insertOne(item.record);
        const [record] = await insertMany([item]);
        return record!;
      } catch (error) {
        throw mapConstraintError(error, `job ${item.record.id}`);
      }
    },
    many: insertMany,
  });

  // Transitions run on the fixed-plan connections (open-database.ts):
  // planned once, through the primary keys. Without those connections they
  // are planned on every execution, not prepared: a generic plan made while
  // the jobs table was small (a new install, the first minute after start)
  // scans the table whole, and PostgreSQL keeps it until the table is next
  // analyzed, however big it grows meanwhile.
  const TRANSITION_QUERY = { prepared: false, fixedPlan: true };

  /** One transition, one statement. */
  const transitionOne = async (item: TransitionItem): Promise<JobRecord | null> => {
    const { sql, params } = transitionBatchStatement(jobs, attempts, [item]);
    let rows: JobDbRow[];
    try {
      ({ rows } = await ctx.query<JobDbRow>(sql, params, TRANSITION_QUERY));
    } catch (error) {
      const insert = item.change?.insert;
      if (insert === undefined) throw error;
      throw mapConstraintError(error, `attempt ${insert.attempt} of job ${insert.jobId}`);
    }
    const row = rows[0];
    return row === undefined ? null : toJobRecord(row);
  };

  const batchedTransition = createBatcher<TransitionItem, JobRecord | null>({
    shape: transitionShape,
    identity: (item) => item.jobId.toLowerCase(),
    compose: composeTransitions,
    applied: (job) => job !== null,
    one: transitionOne,
    async many(items) {
      const { sql, params } = transitionBatchStatement(jobs, attempts, items);
      const { rows } = await ctx.query<JobDbRow>(sql, params, TRANSITION_QUERY);
      const byId = new Map(rows.map((row) => [row.id, row]));
      return items.map((item) => {
        const row = byId.get(item.jobId.toLowerCase()); // uuids come back in lower case
        return row === undefined ? null : toJobRecord(row);
      });
    },
  });

  return {
    async create(job, initial) {
      const record = initial === undefined ? queuedJobRecord(job) : { ...queuedJobRecord(job), ...definedOnly(initial.patch) };
      return batchedCreate({ record, attempt: initial?.attempt });
    },


    async get(id) {
      if (!isUuid(id)) return null;
      return jobLookup(id.toLowerCase()); // uuids come back in lower case
    },

    async list(filter, page) {
      for (const id of [filter.poolId, filter.workerId, filter.targetId, page.after]) {
        if (id !== undefined && !isUuid(id)) return [];
      }
      const params: unknown[] = [filter.space];
      let where = "j.space = $1";
      const equal = (column: string, value: unknown) => {
        params.push(value);
        where += ` and j.${column} = $${params.length}`;
      };
      if (filter.poolId !== undefined) equal("resolved_pool_id", filter.poolId);
      if (filter.state !== undefined) equal("state", filter.state);
      if (filter.runId !== undefined) equal("run_id", filter.runId);
      if (filter.workerId !== undefined) equal("worker_id", filter.workerId);
      if (filter.targetId !== undefined) equal("target_id", filter.targetId);
      if (page.after !== undefined) {
        // Keyset: strictly after the previous page's last row in (created_at, id) order.
        params.push(page.after);
        where += ` and (j.created_at, j.id) < (select p.created_at, p.id from ${jobs} p where p.id = $${params.length})`;
      }
      params.push(page.limit);
      return selectJobs(
        `select j.* from ${jobs} j where ${where} order by j.created_at desc, j.id desc limit $${params.length}`,
        params,
      );
    },

    async transition(jobId, fence, patch, attempt) {
      if (!isUuid(jobId) || fence.states.length === 0) return null;
      if (fence.workerId !== undefined && !isUuid(fence.workerId)) return null;
      return batchedTransition(normalizeTransition({ jobId, fence, patch, change: attempt }));
    },

    async queued(poolId, limit, after) {
      if (!isUuid(poolId)) return [];
      if (after === undefined) return selectJobs(queuedSql, [poolId, limit]);
      // Placed after `after` in the queue order: priority desc, created_at asc, id asc.
      return selectJobs(queuedAfterSql, [poolId, limit, after.priority, after.createdAt, after.id]);
    },

    async queueDepth(poolId, before, atMost) {
      if (!isUuid(poolId)) return 0;
      const limit = atMost ?? null;
      // "Placed before" in the order of `queued`: priority desc, created_at asc, id asc.
      const { rows } =
        before === undefined
          ? await ctx.query<{ n: number }>(depthSql, [poolId, limit])
          : await ctx.query<{ n: number }>(depthBeforeSql, [poolId, limit, before.priority, before.createdAt, before.id]);
      const n = Number(rows[0]?.n ?? 0);
      return limit === null ? n : Math.min(n, limit);
    },

    async queueStats(poolId) {
      if (!isUuid(poolId)) return { queued: 0, oldestQueuedAt: null };
      const { rows } = await ctx.query<{ queued: number; oldest: string | Date | null }>(statsSql, [poolId]);
      const row = rows[0];
      return { queued: Number(row?.queued ?? 0), oldestQueuedAt: toDateOrNull(row?.oldest) };
    },

    async poolsWithQueuedJobs() {
      const { rows } = await ctx.query<{ resolved_pool_id: string }>(poolsWithQueuedSql, []);
      return rows.map((row) => row.resolved_pool_id);
    },

    async queueExpired(now, limit) {
      return selectJobs(queueExpiredSql, [now, limit]);
    },

    async queuedNotWaiting(poolId, now, limit) {
      if (!isUuid(poolId)) return [];
      return (await selectJobs(queuedNotWaitingSql, [poolId, now, limit])).sort(queueOrder);
    },

    async attempts(jobId) {
      if (!isUuid(jobId)) return [];
      return selectAttempts(attemptsSql, [jobId]);
    },

    async liveAttempts() {
      return selectAttempts(liveAttemptsSql, []);
    },

    async liveAttemptsOfWorker(workerId) {
      if (!isUuid(workerId)) return [];
      return selectAttempts(liveAttemptsOfWorkerSql, [workerId]);
    },
  };
}

/** A job field's value as a parameter: jsonb goes as JSON text (pg would send a JS array as a Postgres array). */
function jobParam(key: string, value: unknown): unknown {
  return key === "env" && value !== null ? JSON.stringify(value) : value;
}

function toJobRecord(row: JobDbRow): JobRecord {
  return {
    id: row.id,
    space: row.space,
    name: row.name,
    script: row.script,
    env: row.env,
    requestedPoolId: row.requested_pool_id,
    targetId: row.target_id,
    runId: row.run_id,
    requiredLabels: row.required_labels,
    priority: row.priority,
    exclusive: row.exclusive,
    timeoutMs: toNumberOrNull(row.timeout_ms),
    queueTimeoutMs: toNumberOrNull(row.queue_timeout_ms),
    maxAttempts: row.max_attempts,
    state: row.state,
    attempt: row.attempt,
    workerId: row.worker_id,
    exitCode: row.exit_code,
    failureReason: row.failure_reason,
    message: row.message,
    resolvedPoolId: row.resolved_pool_id,
    poolRule: row.pool_rule,
    poolReason: row.pool_reason,
    workerReason: row.worker_reason,
    builtinWorker: row.builtin_worker,
    createdAt: toDate(row.created_at),
    startedAt: toDateOrNull(row.started_at),
    endedAt: toDateOrNull(row.ended_at),
    queueDeadline: toDateOrNull(row.queue_deadline),
  };
}

function toAttemptRecord(row: AttemptDbRow): AttemptRecord {
  return {
    jobId: row.job_id,
    attempt: row.attempt,
    workerId: row.worker_id,
    state: row.state,
    assignedAt: toDate(row.assigned_at),
    acceptedAt: toDateOrNull(row.accepted_at),
    endedAt: toDateOrNull(row.ended_at),
    outcome: row.outcome,
    exitCode: row.exit_code,
    lastSeq: row.last_seq,
  };
}
