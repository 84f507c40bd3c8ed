// The invariant checker every fault scenario ends with. It reads Postgres
// (the scenario's own schema) and Redis (the scenario's own key prefix)
// directly, not through the API, and reports every violation of:
//
//   1. one terminal outcome per job: at most one attempt ends with a job
//      outcome, it is the job's current attempt, and it agrees with the job;
//      a terminal job has no live attempt, a placed job exactly one;
//   2. no accepted report from a stale attempt: every attempt other than the
//      job's current one ended as worker_lost or unreachable;
//   3. log sequences contiguous per attempt: 1..max, no gap, and only for
//      attempts that exist;
//   4. Redis leases equal the live attempts in Postgres, lease by lease and
//      as each worker's active-lease count.
//
// The system heals asynchronously, so waitForInvariants polls until they
// hold (and, by default, every job has ended) or the time is up.

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { MikroORM } from "@mikro-orm/postgresql";
import { Redis } from "ioredis";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);
const LOST = new Set(["worker_lost", "unreachable"]);

export interface InvariantTarget {
  databaseUrl: string;
  schema: string;
  redisUrl: string;
  redisPrefix: string;
}

export interface Sql {
  query<T = Record<string, unknown>>(sql: string): Promise<T[]>;
  close(): Promise<void>;
}

/** Raw SQL on the scenario's schema (search_path set to it). */
export async function openSql(databaseUrl: string, schema: string): Promise<Sql> {
  const orm = await MikroORM.init({
    clientUrl: databaseUrl,
    entities: [],
    discovery: { warnWhenNoEntities: false },
    pool: { min: 0, max: 1 },
    allowGlobalContext: true,
    schema,
  });
  const connection = orm.em.getConnection();
  return {
    async query<T>(sql: string) {
      return (await connection.execute(sql.replaceAll("$schema", `"${schema}"`))) as T[];
    },
    close: () => orm.close(true),
  };
}

interface JobRow {
  id: string;
  state: string;
  attempt: number;
  worker_id: string | null;
  builtin_worker: boolean;
  failure_reason: string | null;
}
interface AttemptRow {
  job_id: string;
  attempt: number;
  worker_id: string;
  state: string;
  outcome: string | null;
}
interface LogRow {
  job_id: string;
  attempt: number;
  n: string | number;
  lo: number;
  hi: number;
}

export interface InvariantReport {
  violations: string[];
  jobs: number;
  unfinished: number;
  liveAttempts: number;
  redisLeases: number;
}

export async function checkInvariants(target: InvariantTarget): Promise<InvariantReport> {
  const sql = await openSql(target.databaseUrl, target.schema);
  const violations: string[] = [];
  let jobs: JobRow[];
  let attempts: AttemptRow[];
  let logs: LogRow[];
  try {
    jobs = await sql.query<JobRow>(`select id, state, attempt, worker_id, builtin_worker, failure_reason from $schema.jobs`);
    attempts = await sql.query<AttemptRow>(`select job_id, attempt, worker_id, state, outcome from $schema.job_attempts order by job_id, attempt`);
    logs = await sql.query<LogRow>(
      `select job_id, attempt, count(*) as n, min(seq) as lo, max(seq) as hi from $schema.log_chunks group by job_id, attempt`,
    );
  } finally {
    await sql.close();
  }

  const attemptsOf = new Map<string, AttemptRow[]>();
  for (const row of attempts) {
    const list = attemptsOf.get(row.job_id) ?? [];
    list.push(row);
    attemptsOf.set(row.job_id, list);
  }
  const live: AttemptRow[] = [];
  let unfinished = 0;
  for (const job of jobs) {
    const mine = attemptsOf.get(job.id) ?? [];
    const terminal = TERMINAL.has(job.state);
    if (!terminal) unfinished++;
    const withOutcome = mine.filter((a) => a.outcome !== null && TERMINAL.has(a.outcome));
    if (withOutcome.length > 1) {
      violations.push(`job ${job.id}: ${withOutcome.length} attempts recorded a job outcome (${withOutcome.map((a) => `#${a.attempt}=${a.outcome}`).join(", ")})`);
    }
    for (const a of withOutcome) {
      if (a.attempt !== job.attempt) violations.push(`job ${job.id}: stale attempt #${a.attempt} recorded outcome ${a.outcome} (current attempt #${job.attempt})`);
      else if (a.outcome !== job.state) violations.push(`job ${job.id}: attempt #${a.attempt} outcome ${a.outcome} but job is ${job.state}`);
    }
    if (terminal && !job.builtin_worker && job.attempt > 0 && withOutcome.length === 0) {
      const current = mine.find((a) => a.attempt === job.attempt);
      const lostForGood = job.state === "failed" && job.failure_reason === "worker_lost" && current !== undefined && LOST.has(current.outcome ?? "");
      const cancelledAway = job.state === "cancelled" && current?.state === "ended";
      if (!lostForGood && !cancelledAway) violations.push(`job ${job.id}: ${job.state} but its attempt #${job.attempt} recorded no outcome (${current?.outcome ?? "no attempt row"})`);
    }
    for (const a of mine) {
      if (a.state !== "ended") {
        live.push(a);
        if (terminal || job.state === "queued") violations.push(`job ${job.id} is ${job.state} but attempt #${a.attempt} is still ${a.state}`);
        else if (a.attempt !== job.attempt) violations.push(`job ${job.id}: stale attempt #${a.attempt} still ${a.state}`);
      } else if (a.attempt !== job.attempt && !LOST.has(a.outcome ?? "")) {
        violations.push(`job ${job.id}: earlier attempt #${a.attempt} ended with ${a.outcome}, not worker_lost/unreachable`);
      }
    }
    if ((job.state === "assigned" || job.state === "running") && !job.builtin_worker) {
      if (!mine.some((a) => a.attempt === job.attempt && a.state !== "ended")) violations.push(`job ${job.id} is ${job.state} without a live attempt #${job.attempt}`);
    }
  }

  const known = new Set(attempts.map((a) => `${a.job_id}:${a.attempt}`));
  const builtinJobs = new Set(jobs.filter((j) => j.builtin_worker).map((j) => j.id));
  for (const row of logs) {
    const n = Number(row.n);
    if (Number(row.lo) !== 1 || Number(row.hi) !== n) {
      violations.push(`log of job ${row.job_id} attempt #${row.attempt} is not contiguous: ${n} chunks, seq ${row.lo}..${row.hi}`);
    }
    if (!known.has(`${row.job_id}:${row.attempt}`) && !builtinJobs.has(row.job_id)) {
      violations.push(`log chunks stored for job ${row.job_id} attempt #${row.attempt}, which was never placed`);
    }
  }

  const redis = new Redis(target.redisUrl, { maxRetriesPerRequest: 1, lazyConnect: true });
  redis.on("error", () => {});
  let redisLeases = 0;
  try {
    await redis.connect();
    const leases = await redis.hgetall(`${target.redisPrefix}leases`);
    redisLeases = Object.keys(leases).length;
    const liveAgentAttempts = live.filter((a) => !builtinJobs.has(a.job_id));
    const expected = new Map(liveAgentAttempts.map((a) => [`${a.job_id}:${a.attempt}`, a.worker_id]));
    for (const [id, workerId] of Object.entries(leases)) {
      const want = expected.get(id);
      if (want === undefined) violations.push(`Redis holds lease ${id} (worker ${workerId}) but Postgres has no live attempt for it`);
      else if (want !== workerId) violations.push(`Redis lease ${id} is on worker ${workerId}, Postgres says ${want}`);
    }
    for (const [id, workerId] of expected) {
      if (leases[id] === undefined) violations.push(`live attempt ${id} on worker ${workerId} has no lease in Redis`);
    }
    const perWorker = new Map<string, number>();
    for (const a of liveAgentAttempts) perWorker.set(a.worker_id, (perWorker.get(a.worker_id) ?? 0) + 1);
    const workerIds = new Set([...perWorker.keys(), ...attempts.map((a) => a.worker_id)]);
    for (const workerId of workerIds) {
      const count = Number((await redis.hget(`${target.redisPrefix}worker:${workerId}`, "leases")) ?? 0);
      const want = perWorker.get(workerId) ?? 0;
      if (count !== want) violations.push(`worker ${workerId}: Redis counts ${count} active leases, Postgres has ${want} live attempts`);
    }
  } finally {
    redis.disconnect();
  }

  return { violations, jobs: jobs.length, unfinished, liveAttempts: live.length, redisLeases };
}

/**
 * Polls until every invariant holds (and, unless allowUnfinished, every job
 * has ended); fails with the last violations otherwise.
 */
export async function waitForInvariants(
  target: InvariantTarget,
  options: { timeoutMs?: number; allowUnfinished?: boolean } = {},
): Promise<InvariantReport> {
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  for (;;) {
    const report = await checkInvariants(target);
    const done = options.allowUnfinished === true || report.unfinished === 0;
    if (report.violations.length === 0 && done) return report;
    if (Date.now() > deadline) {
      const problems = [...report.violations];
      if (!done) problems.push(`${report.unfinished} of ${report.jobs} jobs never ended`);
      assert.fail(`invariants violated:\n  ${problems.join("\n  ")}`);
    }
    await sleep(200);
  }
}
