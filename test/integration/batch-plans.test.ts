// The batched transition statement (job-batches.ts) must find its jobs by
// the primary key. PostgreSQL takes jsonb_to_recordset for 100 rows; with
// that estimate it chose to scan a jobs table of a few thousand rows whole,
// dead rows included, on every batch (every accept, finish, requeue), which
// made the database the busiest process of a scheduler under load.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import { MikroORM } from "@mikro-orm/postgresql";
import pg from "pg";
import { silentLogger } from "../../src/logger.ts";
import { FIXED_PLAN_SETTINGS, openFixedPlanPool } from "../../src/stores/postgres/open-database.ts";
import { transitionBatchStatement, type TransitionItem } from "../../src/stores/postgres/job-batches.ts";
import { queueDepthStatement, queuedNotWaitingStatement } from "../../src/stores/postgres/job-repository.ts";
import { quoteIdentifier } from "../../src/stores/postgres/store-context.ts";
import { plainJob } from "../support/jobs.ts";
import { freePort } from "../support/net.ts";
import { createTestDatabase, TEST_DATABASE_URL, type TestDatabase } from "../support/postgres.ts";

const JOBS = 5000;

let t: TestDatabase;
let orm: MikroORM;

before(async () => {
  t = await createTestDatabase({ label: "plans" });
  orm = await MikroORM.init({ clientUrl: TEST_DATABASE_URL, entities: [], discovery: { warnWhenNoEntities: false }, pool: { min: 0, max: 1 } });
});

after(async () => {
  await orm?.close(true);
  await t?.cleanup();
});

/** The statement with its $n parameters written in as literals (text, or arrays of text). */
function inline(sql: string, params: unknown[]): string {
  return sql.replace(/\$(\d+)/g, (_, n: string) => {
    const value = params[Number(n) - 1];
    const text = Array.isArray(value) ? `{${value.join(",")}}` : String(value);
    return `'${text.replaceAll("'", "''")}'`;
  });
}

test("a batch of transitions reads the jobs it changes by id, not by scanning the table", async () => {
  const pool = await t.db.pools.create({ space: "plans", name: "p", description: "" });
  const now = Date.now();
  const jobs = await Promise.all(
    Array.from({ length: JOBS }, (_, n) =>
      t.db.jobs.create(
        plainJob({
          space: "plans",
          name: `job-${n}`,
          requestedPoolId: pool.id,
          resolvedPoolId: pool.id,
          poolRule: "explicit",
          poolReason: "asked for it",
          createdAt: new Date(now + n),
        }),
      ),
    ),
  );
  await orm.em.fork().getConnection().execute(`analyze ${quoteIdentifier(t.schema)}.jobs`);

  const table = (name: string) => `${quoteIdentifier(t.schema)}.${quoteIdentifier(name)}`;
  const items: TransitionItem[] = jobs.slice(0, 3).map((job) => ({
    jobId: job.id,
    fence: { states: ["queued"], attempt: 0 },
    patch: { state: "assigned", attempt: 1, workerId: randomUUID() },
    change: undefined,
  }));
  const { sql, params } = transitionBatchStatement(table("jobs"), table("job_attempts"), items);
  const explained = await orm.em.fork().getConnection().execute<Array<{ "QUERY PLAN": string }>>(`explain ${inline(sql, params)}`);
  const shown = explained.map((row) => row["QUERY PLAN"]).join("\n");
  assert.doesNotMatch(shown, /Seq Scan on jobs/, `the statement scans the jobs table:\n${shown}`);

  // And it still does what it did: the three jobs, and only they, change.
  const changed = await orm.em.fork().getConnection().execute<Array<{ id: string; state: string }>>(inline(sql, params));
  assert.deepEqual(changed.map((row) => row.id).sort(), items.map((item) => item.jobId).sort());
  assert.ok(changed.every((row) => row.state === "assigned"));
  assert.equal((await t.db.jobs.queueStats(pool.id)).queued, JOBS - 3);
});

/** Rows each scan node of an EXPLAIN (ANALYZE, FORMAT JSON) plan read (kept or filtered out), and the node types. */
function scans(plan: Record<string, unknown>, into: Array<{ type: string; rows: number }> = []) {
  const type = String(plan["Node Type"]);
  const count = (key: string) => Number(plan[key] ?? 0);
  if (type.endsWith("Scan") && plan["Relation Name"] === "jobs") {
    into.push({ type, rows: count("Actual Rows") + count("Rows Removed by Filter") + count("Rows Removed by Index Recheck") });
  }
  for (const child of (plan.Plans as Array<Record<string, unknown>> | undefined) ?? []) scans(child, into);
  return into;
}

/** Runs the statement under EXPLAIN ANALYZE and returns what each of its scans of jobs read. */
async function explainScans(sql: string, params: unknown[]) {
  const explained = await orm.em
    .fork()
    .getConnection()
    .execute<Array<{ "QUERY PLAN": Array<{ Plan: Record<string, unknown> }> }>>(`explain (analyze, format json) ${inline(sql, params)}`);
  return scans(explained[0]!["QUERY PLAN"][0]!.Plan);
}

// Before the count was capped and split along the index, each read of a
// queued job (SubmitJob's answer, GetJob, every WatchJob update) counted the
// pool's whole queue: in a backlog of n jobs, n reads of n entries each.
test("counting the jobs ahead of one at the back of a long queue reads no more than the limit", async () => {
  const pool = await t.db.pools.create({ space: "plans", name: "depth", description: "" });
  const now = Date.now();
  const jobs = [];
  for (let n = 0; n < 2000; n += 200) {
    jobs.push(
      ...(await Promise.all(
        Array.from({ length: 200 }, (_, k) =>
          t.db.jobs.create(
            plainJob({
              space: "plans",
              name: `deep-${n + k}`,
              requestedPoolId: pool.id,
              resolvedPoolId: pool.id,
              poolRule: "explicit",
              poolReason: "asked for it",
              createdAt: new Date(now + n + k),
            }),
          ),
        ),
      )),
    );
  }
  await orm.em.fork().getConnection().execute(`analyze ${quoteIdentifier(t.schema)}.jobs`);
  const last = jobs[jobs.length - 1]!;
  // 1,999 jobs of the same priority are ahead of the last one.
  assert.equal(await t.db.jobs.queueDepth(pool.id, last), 1999);
  assert.equal(await t.db.jobs.queueDepth(pool.id, last, 150), 150);
  assert.equal(await t.db.jobs.queueDepth(pool.id, last, 500), 500);

  const sql = queueDepthStatement(`${quoteIdentifier(t.schema)}.jobs`, true);
  const read = await explainScans(sql, [pool.id, 150, last.priority, last.createdAt.toISOString(), last.id]);
  const shown = JSON.stringify(read);
  assert.ok(read.length > 0 && read.every((scan) => scan.type !== "Seq Scan"), `the count scans the jobs table: ${shown}`);
  assert.ok(read.reduce((sum, scan) => sum + scan.rows, 0) <= 300, `the count read past its limit: ${shown}`);
});

// A pool with no healthy worker: every pass (every submit) looks for the
// queued jobs that cannot wait. Reading the pool's whole queue for them cost
// each submit the backlog; reading every pool's jobs without a deadline
// (jobs_queue_deadline_index) costs it the other pools' backlogs.
test("finding the jobs that cannot wait in a long queue of waiting ones reads only those", async () => {
  const pool = await t.db.pools.create({ space: "plans", name: "waiting", description: "" });
  const now = Date.now();
  const waitUntil = new Date(now + 3_600_000);
  for (let n = 0; n < 2000; n += 200) {
    await Promise.all(
      Array.from({ length: 200 }, (_, k) =>
        t.db.jobs.create(
          plainJob({ space: "plans", name: `wait-${n + k}`, resolvedPoolId: pool.id, poolRule: "explicit", createdAt: new Date(now + n + k), queueDeadline: waitUntil }),
        ),
      ),
    );
  }
  // Another pool's backlog of jobs that never asked to wait (its workers are busy).
  const busy = await t.db.pools.create({ space: "plans", name: "busy", description: "" });
  for (let n = 0; n < 1000; n += 200) {
    await Promise.all(
      Array.from({ length: 200 }, (_, k) =>
        t.db.jobs.create(plainJob({ space: "plans", name: `busy-${n + k}`, resolvedPoolId: busy.id, poolRule: "explicit", createdAt: new Date(now + n + k) })),
      ),
    );
  }
  const doomed = await Promise.all([
    t.db.jobs.create(plainJob({ space: "plans", name: "no-deadline", resolvedPoolId: pool.id, poolRule: "explicit", createdAt: new Date(now + 5000) })),
    t.db.jobs.create(
      plainJob({ space: "plans", name: "past", resolvedPoolId: pool.id, poolRule: "explicit", createdAt: new Date(now + 5001), queueDeadline: new Date(now - 1) }),
    ),
  ]);
  await orm.em.fork().getConnection().execute(`analyze ${quoteIdentifier(t.schema)}.jobs`);
  const found = await t.db.jobs.queuedNotWaiting(pool.id, new Date(now), 64);
  assert.deepEqual(
    found.map((job) => job.name),
    doomed.map((job) => job.name),
  );

  const read = await explainScans(queuedNotWaitingStatement(`${quoteIdentifier(t.schema)}.jobs`), [pool.id, new Date(now).toISOString(), 64]);
  const shown = JSON.stringify(read);
  assert.ok(read.length > 0 && read.every((scan) => scan.type !== "Seq Scan"), `the lookup scans the jobs table: ${shown}`);
  assert.ok(read.reduce((sum, scan) => sum + scan.rows, 0) <= 10, `the lookup read the waiting jobs: ${shown}`);
});

/** Plan nodes of an EXPLAIN (FORMAT JSON) plan, with their fields. */
function planNodes(plan: Record<string, unknown>, into: Array<Record<string, unknown>> = []): Array<Record<string, unknown>> {
  into.push(plan);
  for (const child of (plan.Plans as Array<Record<string, unknown>> | undefined) ?? []) planNodes(child, into);
  return into;
}

const describe = (node: Record<string, unknown>) =>
  `${String(node["Node Type"])}${node["Relation Name"] === undefined ? "" : ` on ${String(node["Relation Name"])}`}` +
  `${node["Index Cond"] === undefined ? "" : ` (${String(node["Index Cond"])})`}`;

test("on the fixed-plan settings, a transition planned while jobs was tiny still finds its jobs by key once the table has grown, in work linear in the batch", async () => {
  const table = (name: string) => `${quoteIdentifier(t.schema)}.${quoteIdentifier(name)}`;
  const pool = await t.db.pools.create({ space: "plans", name: "fixed", description: "" });
  // A fresh table of its own: what a new install plans its first transitions against.
  const fresh = `fixed_${Date.now().toString(36)}`;
  const admin = orm.em.fork().getConnection();
  await admin.execute(`create table ${table(fresh)} (like ${table("jobs")} including all)`);
  await admin.execute(`create table ${table(`${fresh}_attempts`)} (like ${table("job_attempts")} including all)`);
  const client = new pg.Client({
    connectionString: TEST_DATABASE_URL,
    options: Object.entries(FIXED_PLAN_SETTINGS)
      .map(([name, value]) => `-c ${name}=${value}`)
      .join(" "),
  });
  await client.connect();
  try {
    const insertJobs = async (n: number, from: number) => {
      await client.query(
        `insert into ${table(fresh)} (id, space, name, script, env, run_id, required_labels, priority, exclusive, max_attempts, state, attempt, message, resolved_pool_id, pool_reason, worker_reason, builtin_worker, created_at)
         select gen_random_uuid(), 'plans', 'f' || g, 'true', '{}', '', '{}', 0, false, 1, 'queued', 0, '', $1, '', '', false, now() from generate_series($2::int, $3::int) g`,
        [pool.id, from, from + n - 1],
      );
    };
    // Each item moves its job to the next state and writes its attempt row:
    // the shape of an assignment, an acceptance or a finish.
    const batch = (ids: string[], attempt: number): TransitionItem[] =>
      ids.map((jobId) => ({
        jobId,
        fence: { states: ["queued", "assigned"], attempt: attempt - 1 },
        patch: { state: "assigned", attempt, workerReason: "planned once" },
        change: {
          insert: { jobId, attempt, workerId: pool.id, state: "assigned", assignedAt: new Date(), acceptedAt: null, endedAt: null, outcome: null, exitCode: null, lastSeq: 0 },
        },
      }));
    const statement = (items: TransitionItem[]) => transitionBatchStatement(table(fresh), table(`${fresh}_attempts`), items);
    const execute = (items: TransitionItem[]) => {
      const { params } = statement(items);
      return inline(`execute transition(${params.map((_, n) => `$${n + 1}`).join(", ")})`, params);
    };
    await insertJobs(5, 1);
    const ids = (await client.query<{ id: string }>(`select id from ${table(fresh)} order by id`)).rows.map((row) => row.id);
    await client.query(`prepare transition as ${statement(batch(ids.slice(0, 2), 1)).sql}`);
    for (let n = 0; n < 6; n++) assert.equal((await client.query(execute(batch(ids.slice(0, 2), n + 1)))).rowCount, 2);
    // Grown to thousands of rows, not analyzed: the plan made at five rows is the one that runs.
    await insertJobs(5000, 6);
    const many = (await client.query<{ id: string }>(`select id from ${table(fresh)} where attempt = 0 limit 64`)).rows.map((row) => row.id);
    const explained = await client.query<{ "QUERY PLAN": Array<{ Plan: Record<string, unknown> }> }>(
      `explain (analyze, format json) ${execute(batch(many, 1))}`,
    );
    const nodes = planNodes(explained.rows[0]!["QUERY PLAN"][0]!.Plan);
    const shown = nodes.map(describe).join(", ");
    const { rows } = await client.query<{ generic_plans: string }>("select generic_plans from pg_prepared_statements where name = 'transition'");
    assert.ok(Number(rows[0]?.generic_plans) > 0, "the statement runs on its generic plan, made once");
    // Every read of the tables goes through an index, with a key to look for.
    const reads = nodes.filter((node) => node["Relation Name"] !== undefined && node["Node Type"] !== "ModifyTable");
    assert.ok(reads.length > 0, shown);
    for (const node of reads) {
      const keyed = node["Node Type"] === "Bitmap Heap Scan" ? node["Recheck Cond"] !== undefined : /Index/.test(String(node["Node Type"])) && node["Index Cond"] !== undefined;
      assert.ok(keyed, `the cached plan reads a table whole: ${shown}`);
    }
    // No join compares every item with every other: a batch of 64 would
    // throw away 64 x 63 pairs, per join, in a plan of nested loops over the items.
    for (const node of nodes) {
      const removed = Number(node["Rows Removed by Join Filter"] ?? 0) * Number(node["Actual Loops"] ?? 1);
      assert.ok(removed < many.length, `${describe(node)} threw away ${removed} pairs of a batch of ${many.length}: ${shown}`);
    }
    const changed = await client.query<{ n: number }>(`select count(*)::int as n from ${table(fresh)} where attempt = 1 and id = any($1::uuid[])`, [many]);
    assert.equal(changed.rows[0]?.n, many.length, "every job of the batch moved");
  } finally {
    await client.end();
  }
});

test("fixed-plan connections whose settings the server did not take are not used", async () => {
  // "0" is a valid spelling of off, but current_setting reads back "off": as
  // when a pooler drops the startup options, what was asked for is not there.
  const ignored = await openFixedPlanPool(TEST_DATABASE_URL, silentLogger(), { ...FIXED_PLAN_SETTINGS, enable_seqscan: "0" });
  assert.ok("unavailable" in ignored && /enable_seqscan/.test(ignored.unavailable), JSON.stringify(ignored));
  assert.equal(ignored.passing, false, "settings the server ignores are not tried again");
  const refused = await openFixedPlanPool(TEST_DATABASE_URL, silentLogger(), { enable_seqscan: "sometimes" });
  assert.ok("unavailable" in refused && /enable_seqscan/.test(refused.unavailable), JSON.stringify(refused));
  assert.equal(refused.passing, false, "settings the server refuses are not tried again");
  const closed = new URL(TEST_DATABASE_URL);
  closed.port = String(await freePort());
  const unreachable = await openFixedPlanPool(closed.toString(), silentLogger());
  assert.ok("unavailable" in unreachable && unreachable.passing, `a refused connection is tried again: ${JSON.stringify(unreachable)}`);
  const taken = await openFixedPlanPool(TEST_DATABASE_URL, silentLogger());
  assert.ok("pool" in taken);
  try {
    const { rows } = await taken.pool.query<{ mode: string }>("select current_setting('plan_cache_mode') as mode");
    assert.equal(rows[0]?.mode, "force_generic_plan");
  } finally {
    await taken.pool.end();
  }
});
