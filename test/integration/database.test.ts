// The Database contract on the real PostgreSQL (127.0.0.1:5432, database
// `test`). The file migrates its own schema once and every test works in its
// own space, so tests never see each other's rows; the migration tests open
// further schemas of their own.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { MikroORM } from "@mikro-orm/postgresql";
import { pino } from "pino";
import type { JobRecord, LogChunkRecord } from "../../src/domain.ts";
import { AlreadyExistsError, PreconditionError, type Database, type NewJob } from "../../src/stores/database.ts";
import { entities } from "../../src/stores/postgres/entities/index.ts";
import { migrations } from "../../src/stores/postgres/migrations/index.ts";
import { openDatabase } from "../../src/stores/postgres/open-database.ts";
import {
  createTestDatabase,
  createTestSchema,
  testDatabaseUrl,
  TEST_DATABASE_URL,
  type TestDatabase,
} from "../support/postgres.ts";

let spaceCounter = 0;
/** A space no other test in this file uses. */
function freshSpace(): string {
  spaceCounter += 1;
  return `space-${spaceCounter}-${randomUUID().slice(0, 6)}`;
}

function capturingLogger() {
  const events: Record<string, unknown>[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => events.push(JSON.parse(line)) });
  return { logger, events };
}

function migrationEvents(events: Record<string, unknown>[]) {
  return events.filter((event) => event.event === "database_migrated");
}

let jobClock = Date.parse("2030-01-01T00:00:00.000Z");
/** A job for `space`; createdAt advances by one second per job unless given. */
function newJob(space: string, overrides: Partial<NewJob> = {}): NewJob {
  jobClock += 1000;
  return {
    id: randomUUID(),
    space,
    name: "deploy",
    script: "echo hello",
    env: { REGION: "eu-west-1", EMPTY: "" },
    requestedPoolId: null,
    targetId: null,
    runId: "run-1",
    requiredLabels: ["linux", "terraform"],
    priority: 0,
    exclusive: false,
    timeoutMs: 3_000_000_000,
    queueTimeoutMs: null,
    maxAttempts: 3,
    resolvedPoolId: null,
    poolRule: "space_default",
    poolReason: "the space's default pool",
    queueDeadline: null,
    createdAt: new Date(jobClock),
    ...overrides,
  };
}

function chunk(jobId: string, attempt: number, seq: number, text: string): LogChunkRecord {
  return {
    jobId,
    attempt,
    seq,
    stream: seq % 2 === 0 ? "stderr" : "stdout",
    data: new TextEncoder().encode(text),
    time: new Date(Date.parse("2030-01-01T00:00:00.000Z") + seq),
  };
}

describe("PostgreSQL database", () => {
  let test_: TestDatabase;
  let db: Database;

  before(async () => {
    test_ = await createTestDatabase({ label: "db" });
    db = test_.db;
  });

  after(async () => {
    await test_?.cleanup();
  });

  describe("migrations", () => {
    test("apply on a fresh schema, then find nothing to do on re-open; data survives", async () => {
      const { schema, url, drop } = await createTestSchema("migrate");
      try {
        const first = capturingLogger();
        const opened = await openDatabase({ url, schema, logger: first.logger });
        const [applied] = migrationEvents(first.events);
        // Generated migration classes are named after their migration.
        assert.deepEqual(applied.applied, migrations.map((migration) => migration.name));
        const pool = await opened.ensureSpace("default");
        await opened.close();

        const second = capturingLogger();
        const reopened = await openDatabase({ url: testDatabaseUrl(schema), logger: second.logger });
        const [again] = migrationEvents(second.events);
        assert.deepEqual(again.applied, []);
        assert.equal(again.schema, schema);
        assert.deepEqual(await reopened.pools.defaultPool("default"), pool);
        await reopened.close();
      } finally {
        await drop();
      }
    });

    test("two processes opening a fresh schema at once both succeed", async () => {
      const { schema, url, drop } = await createTestSchema("race");
      try {
        const logs = [capturingLogger(), capturingLogger()];
        const opened = await Promise.all(logs.map(({ logger }) => openDatabase({ url, schema, logger })));
        const appliedCounts = logs.map(({ events }) => (migrationEvents(events)[0].applied as string[]).length);
        assert.deepEqual(appliedCounts.sort(), [0, migrations.length]);
        await Promise.all(opened.map((database) => database.close()));
      } finally {
        await drop();
      }
    });

    test("the committed migrations produce exactly the schema the entities describe", async () => {
      const orm = await MikroORM.init({
        entities,
        clientUrl: TEST_DATABASE_URL,
        schema: test_.schema,
        allowGlobalContext: true,
      });
      try {
        // MikroORM reads the catalog of every schema in the database; one that
        // a test running alongside drops meanwhile fails the read (3F000). Read again.
        let diff: string | undefined;
        for (let tries = 1; diff === undefined; tries++) {
          try {
            diff = await orm.schema.getUpdateSchemaSQL({ wrap: false, schema: test_.schema });
          } catch (error) {
            if ((error as { code?: string }).code !== "3F000" || tries === 5) throw error;
          }
        }
        assert.equal(diff.trim(), "", "entities changed without a migration: run src/stores/postgres/create-migration.ts");
      } finally {
        await orm.close(true);
      }
    });
  });

  describe("spaces and pools", () => {
    test("ensureSpace creates the space's default pool once, also under concurrent calls", async () => {
      const space = freshSpace();
      const results = await Promise.all(Array.from({ length: 8 }, () => db.ensureSpace(space)));
      assert.equal(new Set(results.map((pool) => pool.id)).size, 1);
      assert.equal(results[0].isDefault, true);
      assert.equal(results[0].name, "default");
      assert.equal(results[0].workerCount, 0);
      assert.deepEqual(await db.ensureSpace(space), results[0]);
      const pools = await db.pools.list(space);
      assert.equal(pools.length, 1);
    });

    test("pool names are unique within a space, not across spaces", async () => {
      const space = freshSpace();
      const other = freshSpace();
      const pool = await db.pools.create({ space, name: "builders", description: "CI builders" });
      assert.equal(pool.isDefault, false);
      assert.equal(pool.workerCount, 0);
      assert.deepEqual(await db.pools.get(pool.id), pool);
      await assert.rejects(db.pools.create({ space, name: "builders", description: "again" }), AlreadyExistsError);
      const elsewhere = await db.pools.create({ space: other, name: "builders", description: "" });
      assert.equal(elsewhere.space, other);
      // create() made sure the space and its default pool exist.
      assert.equal((await db.pools.defaultPool(space))?.name, "default");
      assert.deepEqual(
        (await db.pools.list(space)).map((p) => p.name),
        ["default", "builders"],
      );
    });

    test("update renames and describes; a taken name is refused; unknown ids are null", async () => {
      const space = freshSpace();
      const a = await db.pools.create({ space, name: "a", description: "first" });
      await db.pools.create({ space, name: "b", description: "second" });
      const renamed = await db.pools.update(a.id, { name: "a2", description: "renamed" });
      assert.equal(renamed?.name, "a2");
      assert.equal(renamed?.description, "renamed");
      assert.ok(renamed!.updatedAt.getTime() >= a.updatedAt.getTime());
      const described = await db.pools.update(a.id, { description: "only the description" });
      assert.equal(described?.name, "a2");
      await assert.rejects(db.pools.update(a.id, { name: "b" }), AlreadyExistsError);
      assert.equal(await db.pools.update(randomUUID(), { name: "x" }), null);
      assert.equal(await db.pools.get(randomUUID()), null);
      assert.equal(await db.pools.get("not-a-uuid"), null);
    });

    test("setDefault moves the default; exactly one default at every step", async () => {
      const space = freshSpace();
      const original = await db.ensureSpace(space);
      const next = await db.pools.create({ space, name: "next", description: "" });
      const made = await db.pools.setDefault(next.id);
      assert.equal(made?.isDefault, true);
      assert.equal((await db.pools.defaultPool(space))?.id, next.id);
      assert.equal((await db.pools.get(original.id))?.isDefault, false);
      // Already the default: still the default, still only one.
      assert.equal((await db.pools.setDefault(next.id))?.isDefault, true);
      assert.equal((await db.pools.list(space)).filter((p) => p.isDefault).length, 1);
      assert.equal(await db.pools.setDefault(randomUUID()), null);
    });

    test("concurrent setDefault calls on two pools leave exactly one default", async () => {
      const space = freshSpace();
      await db.ensureSpace(space);
      const a = await db.pools.create({ space, name: "a", description: "" });
      const b = await db.pools.create({ space, name: "b", description: "" });
      for (let round = 0; round < 10; round++) {
        const results = await Promise.all([
          db.pools.setDefault(a.id),
          db.pools.setDefault(b.id),
          db.pools.setDefault(a.id),
          db.pools.setDefault(b.id),
        ]);
        assert.ok(results.every((pool) => pool?.isDefault === true));
        const defaults = (await db.pools.list(space)).filter((pool) => pool.isDefault);
        assert.equal(defaults.length, 1);
        assert.ok([a.id, b.id].includes(defaults[0].id));
      }
    });

    test("delete refuses the default pool and a pool with workers unless forced", async () => {
      const space = freshSpace();
      const defaultPool = await db.ensureSpace(space);
      await assert.rejects(db.pools.delete(defaultPool.id, { force: true }), PreconditionError);

      const empty = await db.pools.create({ space, name: "empty", description: "" });
      assert.equal(await db.pools.delete(empty.id, { force: false }), true);
      assert.equal(await db.pools.get(empty.id), null);
      assert.equal(await db.pools.delete(empty.id, { force: false }), false);

      const busy = await db.pools.create({ space, name: "busy", description: "" });
      const worker = await db.workers.create(workerInput(space, busy.id));
      await db.tokens.create({ poolId: busy.id, description: "", secretHash: randomUUID(), prefix: "mtr_", expiresAt: null });
      assert.equal((await db.pools.get(busy.id))?.workerCount, 1);
      await assert.rejects(db.pools.delete(busy.id, { force: false }), PreconditionError);
      assert.notEqual(await db.workers.get(worker.id), null);
      assert.equal(await db.pools.delete(busy.id, { force: true }), true);
      assert.equal(await db.workers.get(worker.id), null);
      assert.deepEqual(await db.tokens.list(busy.id), []);
      assert.equal(await db.pools.delete(randomUUID(), { force: true }), false);
    });
    test("a pool deleted without force never takes a worker registering at the same time with it", async () => {
      const space = freshSpace();
      await db.ensureSpace(space);
      for (let round = 0; round < 5; round++) {
        const pool = await db.pools.create({ space, name: `racing-${round}`, description: "" });
        const [deleted, ...registered] = await Promise.allSettled([
          db.pools.delete(pool.id, { force: false }),
          ...[1, 2, 3].map((n) => db.workers.create(workerInput(space, pool.id, { name: `w${round}-${n}` }))),
        ]);
        const created = registered.filter((r) => r.status === "fulfilled").map((r) => r.value);
        for (const r of registered) {
          if (r.status === "rejected") assert.ok(r.reason instanceof PreconditionError, String(r.reason));
        }
        if (deleted.status === "fulfilled") {
          assert.equal(deleted.value, true);
          assert.deepEqual(created, [], "a worker was registered into a pool that was then deleted");
        } else {
          assert.ok(deleted.reason instanceof PreconditionError);
          assert.ok(created.length > 0);
          for (const worker of created) assert.notEqual(await db.workers.get(worker.id), null);
        }
      }
    });
  });

  describe("registration tokens", () => {
    test("use finds a live token by hash and records the use", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const hash = `hash-${randomUUID()}`;
      const token = await db.tokens.create({
        poolId: pool.id,
        description: "ci",
        secretHash: hash,
        prefix: "mtr_ab12",
        expiresAt: new Date("2031-01-01T00:00:00.000Z"),
      });
      assert.equal(token.lastUsedAt, null);
      assert.equal(token.revokedAt, null);
      assert.ok(!("secretHash" in token), "records never carry the hash");

      const now = new Date("2030-06-01T12:00:00.000Z");
      const used = await db.tokens.use(hash, now);
      assert.equal(used?.id, token.id);
      assert.equal(used?.poolId, pool.id);
      assert.deepEqual(used?.lastUsedAt, now);
      assert.deepEqual((await db.tokens.list(pool.id))[0].lastUsedAt, now);
      assert.equal(await db.tokens.use("no-such-hash", now), null);
    });

    test("an expired token is refused from its expiry on", async () => {
      const pool = await db.ensureSpace(freshSpace());
      const hash = `hash-${randomUUID()}`;
      const expiresAt = new Date("2030-01-01T00:00:00.000Z");
      await db.tokens.create({ poolId: pool.id, description: "", secretHash: hash, prefix: "p", expiresAt });
      assert.notEqual(await db.tokens.use(hash, new Date(expiresAt.getTime() - 1)), null);
      assert.equal(await db.tokens.use(hash, expiresAt), null);
      assert.equal(await db.tokens.use(hash, new Date(expiresAt.getTime() + 1)), null);
      assert.deepEqual((await db.tokens.list(pool.id))[0].lastUsedAt, new Date(expiresAt.getTime() - 1));
    });

    test("a revoked token is refused; revoking twice keeps the first time", async () => {
      const pool = await db.ensureSpace(freshSpace());
      const hash = `hash-${randomUUID()}`;
      const token = await db.tokens.create({ poolId: pool.id, description: "", secretHash: hash, prefix: "p", expiresAt: null });
      const first = new Date("2030-02-01T00:00:00.000Z");
      assert.deepEqual((await db.tokens.revoke(token.id, first))?.revokedAt, first);
      assert.deepEqual((await db.tokens.revoke(token.id, new Date("2030-03-01T00:00:00.000Z")))?.revokedAt, first);
      assert.equal(await db.tokens.use(hash, new Date("2030-01-15T00:00:00.000Z")), null);
      assert.equal((await db.tokens.list(pool.id))[0].lastUsedAt, null);
      assert.equal(await db.tokens.revoke(randomUUID(), first), null);
    });

    test("token hashes are unique; a token needs an existing pool", async () => {
      const pool = await db.ensureSpace(freshSpace());
      const hash = `hash-${randomUUID()}`;
      const input = { poolId: pool.id, description: "", secretHash: hash, prefix: "p", expiresAt: null };
      await db.tokens.create(input);
      await assert.rejects(db.tokens.create(input), AlreadyExistsError);
      await assert.rejects(db.tokens.create({ ...input, secretHash: randomUUID(), poolId: randomUUID() }), PreconditionError);
    });
  });

  describe("workers", () => {
    test("create, read back by id and by credential, list newest first", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const other = await db.pools.create({ space, name: "other", description: "" });
      const first = await db.workers.create(workerInput(space, pool.id, { name: "w1" }));
      // Created in the same millisecond, the two would tie on created_at and be listed in id order.
      await sleep(5);
      const second = await db.workers.create(workerInput(space, other.id, { name: "w2" }));
      assert.equal(first.state, "enabled");
      assert.equal(first.lastSeenAt, null);
      assert.deepEqual(await db.workers.get(first.id), first);
      assert.deepEqual(await db.workers.byCredentialHash(`cred-${first.name}-${space}`), first);
      assert.equal(await db.workers.byCredentialHash("unknown"), null);
      assert.deepEqual(
        (await db.workers.list(space)).map((w) => w.name),
        ["w2", "w1"],
      );
      assert.deepEqual(
        (await db.workers.list(space, other.id)).map((w) => w.id),
        [second.id],
      );
      assert.equal(await db.workers.countInPool(pool.id), 1);
      assert.equal((await db.pools.get(pool.id))?.workerCount, 1);
    });

    test("credential hashes are unique; a worker needs an existing pool", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      await db.workers.create(workerInput(space, pool.id, { credentialHash: "same-hash-" + space }));
      await assert.rejects(
        db.workers.create(workerInput(space, pool.id, { name: "other", credentialHash: "same-hash-" + space })),
        AlreadyExistsError,
      );
      await assert.rejects(db.workers.create(workerInput(space, randomUUID(), { name: "orphan" })), PreconditionError);
    });

    test("setState, recordHello and delete", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const worker = await db.workers.create(workerInput(space, pool.id));
      assert.equal((await db.workers.setState(worker.id, "draining"))?.state, "draining");
      const now = new Date("2030-04-01T00:00:00.000Z");
      const hello = await db.workers.recordHello(
        worker.id,
        { labels: ["gpu"], capacity: 8, hostname: "box-2", agentVersion: "1.2.3" },
        now,
      );
      assert.deepEqual(hello, {
        ...worker,
        state: "draining",
        labels: ["gpu"],
        capacity: 8,
        hostname: "box-2",
        agentVersion: "1.2.3",
        lastSeenAt: now,
      });
      assert.deepEqual(await db.workers.get(worker.id), hello);
      assert.equal(await db.workers.setState(randomUUID(), "enabled"), null);
      assert.equal(await db.workers.recordHello(randomUUID(), { labels: [], capacity: 1, hostname: "", agentVersion: "" }, now), null);
      assert.equal(await db.workers.delete(worker.id), true);
      assert.equal(await db.workers.delete(worker.id), false);
      assert.equal(await db.workers.get(worker.id), null);
      assert.equal(await db.workers.countInPool(pool.id), 0);
    });
  });

  describe("targets", () => {
    test("create, get, list by name, update and delete", async () => {
      const space = freshSpace();
      const pool = await db.pools.create({ space, name: "linux", description: "" });
      const web = await db.targets.create({ space, name: "web-eu", description: "web app", defaultPoolId: null });
      const aks = await db.targets.create({ space, name: "aks-prod", description: "cluster", defaultPoolId: pool.id });
      assert.equal(aks.defaultPoolId, pool.id);
      assert.equal(web.defaultPoolId, null);
      assert.deepEqual(await db.targets.get(aks.id), aks);
      assert.deepEqual(
        (await db.targets.list(space)).map((target) => target.name),
        ["aks-prod", "web-eu"],
      );

      const described = await db.targets.update(web.id, { description: "the web app", defaultPoolId: pool.id });
      assert.equal(described?.name, "web-eu");
      assert.equal(described?.description, "the web app");
      assert.equal(described?.defaultPoolId, pool.id);
      assert.ok(described!.updatedAt.getTime() >= web.updatedAt.getTime());
      const renamed = await db.targets.update(web.id, { name: "web-west" });
      assert.equal(renamed?.defaultPoolId, pool.id, "an update without defaultPoolId leaves it as is");
      const cleared = await db.targets.update(web.id, { defaultPoolId: null });
      assert.equal(cleared?.defaultPoolId, null);
      assert.equal(cleared?.name, "web-west");
      assert.deepEqual(await db.targets.get(web.id), cleared);

      assert.equal(await db.targets.delete(web.id), true);
      assert.equal(await db.targets.get(web.id), null);
      assert.equal(await db.targets.delete(web.id), false);
      assert.equal(await db.targets.delete("not-a-uuid"), false);
      assert.equal(await db.targets.get("not-a-uuid"), null);
      assert.equal(await db.targets.update(randomUUID(), { name: "x" }), null);
      assert.deepEqual(await db.targets.list(freshSpace()), []);
    });

    test("names are unique within a space, not across spaces", async () => {
      const space = freshSpace();
      const other = freshSpace();
      const first = await db.targets.create({ space, name: "aks-prod", description: "", defaultPoolId: null });
      await assert.rejects(
        db.targets.create({ space, name: "aks-prod", description: "again", defaultPoolId: null }),
        AlreadyExistsError,
      );
      const elsewhere = await db.targets.create({ space: other, name: "aks-prod", description: "", defaultPoolId: null });
      assert.equal(elsewhere.space, other);
      // create() made sure the space (and its default pool) exist.
      assert.equal((await db.pools.defaultPool(other))?.name, "default");
      const second = await db.targets.create({ space, name: "aks-dev", description: "", defaultPoolId: null });
      await assert.rejects(db.targets.update(second.id, { name: "aks-prod" }), AlreadyExistsError);
      assert.equal((await db.targets.get(second.id))?.name, "aks-dev");
      assert.equal((await db.targets.get(first.id))?.name, "aks-prod");
    });

    test("the default pool must be a pool of the same space", async () => {
      const space = freshSpace();
      const other = freshSpace();
      const foreignPool = await db.pools.create({ space: other, name: "linux", description: "" });
      const ownPool = await db.pools.create({ space, name: "linux", description: "" });
      await assert.rejects(
        db.targets.create({ space, name: "t", description: "", defaultPoolId: foreignPool.id }),
        PreconditionError,
      );
      await assert.rejects(
        db.targets.create({ space, name: "t", description: "", defaultPoolId: randomUUID() }),
        PreconditionError,
      );
      await assert.rejects(
        db.targets.create({ space, name: "t", description: "", defaultPoolId: "not-a-uuid" }),
        PreconditionError,
      );
      assert.deepEqual(await db.targets.list(space), []);
      const target = await db.targets.create({ space, name: "t", description: "", defaultPoolId: ownPool.id });
      await assert.rejects(db.targets.update(target.id, { defaultPoolId: foreignPool.id }), PreconditionError);
      await assert.rejects(db.targets.update(target.id, { name: "renamed", defaultPoolId: randomUUID() }), PreconditionError);
      assert.deepEqual(await db.targets.get(target.id), target, "a refused update changes nothing");
    });

    test("a pool that targets name as default is not deleted unless their defaults are cleared", async () => {
      const space = freshSpace();
      const pool = await db.pools.create({ space, name: "linux", description: "" });
      const spare = await db.pools.create({ space, name: "spare", description: "" });
      const web = await db.targets.create({ space, name: "web-eu", description: "", defaultPoolId: pool.id });
      const aks = await db.targets.create({ space, name: "aks-prod", description: "", defaultPoolId: pool.id });
      const untouched = await db.targets.create({ space, name: "db", description: "", defaultPoolId: spare.id });

      await assert.rejects(db.pools.delete(pool.id, { force: true }), (error: unknown) => {
        assert.ok(error instanceof PreconditionError);
        assert.equal(
          error.message,
          "worker pool linux is the default pool of targets aks-prod, web-eu; clear their default pool or delete with clear_target_defaults",
        );
        return true;
      });
      await assert.rejects(db.pools.delete(pool.id, { force: false, clearTargetDefaults: false }), /aks-prod, web-eu/);
      assert.notEqual(await db.pools.get(pool.id), null);
      assert.equal((await db.targets.get(aks.id))?.defaultPoolId, pool.id);

      // The default pool is still refused first, targets or not.
      const defaultPool = await db.pools.defaultPool(space);
      await db.targets.update(untouched.id, { defaultPoolId: defaultPool!.id });
      await assert.rejects(
        db.pools.delete(defaultPool!.id, { force: true, clearTargetDefaults: true }),
        /is the default pool of space/,
      );
      assert.equal((await db.targets.get(untouched.id))?.defaultPoolId, defaultPool!.id);

      // Targets are checked before workers: without force, a pool with both names the targets.
      const worker = await db.workers.create(workerInput(space, pool.id));
      await assert.rejects(db.pools.delete(pool.id, { force: false }), /default pool of targets/);
      // Clearing the defaults alone still leaves the workers in the way, and rolls back.
      await assert.rejects(db.pools.delete(pool.id, { force: false, clearTargetDefaults: true }), /worker/);
      assert.equal((await db.targets.get(web.id))?.defaultPoolId, pool.id);

      assert.equal(await db.pools.delete(pool.id, { force: true, clearTargetDefaults: true }), true);
      assert.equal(await db.pools.get(pool.id), null);
      assert.equal(await db.workers.get(worker.id), null);
      for (const target of [web, aks]) {
        const after = await db.targets.get(target.id);
        assert.equal(after?.defaultPoolId, null);
        assert.ok(after!.updatedAt.getTime() >= target.updatedAt.getTime());
      }
      assert.equal((await db.targets.get(untouched.id))?.defaultPoolId, defaultPool!.id);

      // One target: the message says so.
      await db.targets.update(untouched.id, { defaultPoolId: spare.id });
      await assert.rejects(
        db.pools.delete(spare.id, { force: false }),
        /^PreconditionError: worker pool spare is the default pool of target db; clear its default pool or delete with clear_target_defaults$/,
      );
    });
  });

  describe("jobs", () => {
    test("create and get round-trip every field", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const input = newJob(space, {
        resolvedPoolId: pool.id,
        requestedPoolId: pool.id,
        queueTimeoutMs: 60_000,
        queueDeadline: new Date("2030-05-01T00:00:00.000Z"),
        exclusive: true,
        priority: 7,
      });
      const created = await db.jobs.create(input);
      assert.equal(created.state, "queued");
      assert.equal(created.attempt, 0);
      assert.deepEqual(await db.jobs.get(input.id), created);
      assert.equal(await db.jobs.get(randomUUID()), null);
      await assert.rejects(db.jobs.create(input), AlreadyExistsError);
    });

    test("transition applies the patch and the attempt change when the fence holds", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const worker = await db.workers.create(workerInput(space, pool.id));
      const job = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id }));
      const assignedAt = new Date("2030-01-02T00:00:00.000Z");

      const assigned = await db.jobs.transition(
        job.id,
        { states: ["queued"] },
        { state: "assigned", attempt: 1, workerId: worker.id, workerReason: "fewest leases" },
        { insert: attemptRecord(job.id, 1, worker.id, assignedAt) },
      );
      assert.deepEqual(assigned, { ...job, state: "assigned", attempt: 1, workerId: worker.id, workerReason: "fewest leases" });
      assert.deepEqual(await db.jobs.attempts(job.id), [attemptRecord(job.id, 1, worker.id, assignedAt)]);

      const startedAt = new Date("2030-01-02T00:00:01.000Z");
      const running = await db.jobs.transition(
        job.id,
        { states: ["assigned"], attempt: 1, workerId: worker.id },
        { state: "running", startedAt },
        { update: { attempt: 1, patch: { state: "running", acceptedAt: startedAt, lastSeq: 4 } } },
      );
      assert.equal(running?.state, "running");
      assert.deepEqual(running?.startedAt, startedAt);
      const [attempt] = await db.jobs.attempts(job.id);
      assert.equal(attempt.state, "running");
      assert.deepEqual(attempt.acceptedAt, startedAt);
      assert.equal(attempt.lastSeq, 4);
      assert.deepEqual(await db.jobs.liveAttempts().then((all) => all.filter((a) => a.jobId === job.id)), [attempt]);
      assert.deepEqual(await db.jobs.liveAttemptsOfWorker(worker.id), [attempt]);

      const endedAt = new Date("2030-01-02T00:00:05.000Z");
      const done = await db.jobs.transition(
        job.id,
        { states: ["running"], attempt: 1, workerId: worker.id },
        { state: "succeeded", exitCode: 0, endedAt, message: "ok" },
        { update: { attempt: 1, patch: { state: "ended", endedAt, outcome: "succeeded", exitCode: 0 } } },
      );
      assert.equal(done?.state, "succeeded");
      assert.equal(done?.exitCode, 0);
      assert.deepEqual(await db.jobs.get(job.id), done);
      assert.deepEqual(await db.jobs.liveAttemptsOfWorker(worker.id), []);
    });

    test("a stale attempt, another worker or a wrong state writes nothing", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const worker = await db.workers.create(workerInput(space, pool.id, { name: "holder" }));
      const intruder = await db.workers.create(workerInput(space, pool.id, { name: "intruder" }));
      const job = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id }));
      const assignedAt = new Date("2030-01-03T00:00:00.000Z");
      await db.jobs.transition(
        job.id,
        { states: ["queued"] },
        { state: "assigned", attempt: 2, workerId: worker.id },
        { insert: attemptRecord(job.id, 2, worker.id, assignedAt) },
      );
      const before = await db.jobs.get(job.id);
      const attemptsBefore = await db.jobs.attempts(job.id);

      const cases = [
        { why: "stale attempt", fence: { states: ["assigned" as const], attempt: 1, workerId: worker.id } },
        { why: "another worker", fence: { states: ["assigned" as const], attempt: 2, workerId: intruder.id } },
        { why: "wrong state", fence: { states: ["running" as const], attempt: 2, workerId: worker.id } },
      ];
      for (const { why, fence } of cases) {
        const withUpdate = await db.jobs.transition(
          job.id,
          fence,
          { state: "failed", failureReason: "worker_lost", endedAt: new Date() },
          { update: { attempt: 2, patch: { state: "ended", outcome: "worker_lost" } } },
        );
        assert.equal(withUpdate, null, why);
        const withInsert = await db.jobs.transition(
          job.id,
          fence,
          { state: "assigned", attempt: 3, workerId: intruder.id },
          { insert: attemptRecord(job.id, 3, intruder.id, assignedAt) },
        );
        assert.equal(withInsert, null, why);
        const patchOnly = await db.jobs.transition(job.id, fence, { message: "should not stick" });
        assert.equal(patchOnly, null, why);
        assert.deepEqual(await db.jobs.get(job.id), before, why);
        assert.deepEqual(await db.jobs.attempts(job.id), attemptsBefore, why);
      }
      assert.equal(await db.jobs.transition(randomUUID(), { states: ["queued"] }, { state: "failed" }), null);
    });

    test("a failing attempt insert rolls the job change back", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const worker = await db.workers.create(workerInput(space, pool.id));
      const job = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id }));
      const at = new Date("2030-01-04T00:00:00.000Z");
      await db.jobs.transition(job.id, { states: ["queued"] }, { state: "assigned", attempt: 1, workerId: worker.id }, {
        insert: attemptRecord(job.id, 1, worker.id, at),
      });
      const before = await db.jobs.get(job.id);
      await assert.rejects(
        db.jobs.transition(job.id, { states: ["assigned"] }, { state: "queued", message: "retry" }, {
          insert: attemptRecord(job.id, 1, worker.id, at),
        }),
        AlreadyExistsError,
      );
      assert.deepEqual(await db.jobs.get(job.id), before);
    });

    test("an attempt change alone is fenced by the job row too", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const worker = await db.workers.create(workerInput(space, pool.id));
      const job = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id }));
      const at = new Date("2030-01-05T00:00:00.000Z");
      await db.jobs.transition(job.id, { states: ["queued"] }, { state: "running", attempt: 1, workerId: worker.id }, {
        insert: { ...attemptRecord(job.id, 1, worker.id, at), state: "running" },
      });
      const progressed = await db.jobs.transition(
        job.id,
        { states: ["running"], attempt: 1, workerId: worker.id },
        {},
        { update: { attempt: 1, patch: { lastSeq: 42 } } },
      );
      assert.equal(progressed?.state, "running");
      assert.equal((await db.jobs.attempts(job.id))[0].lastSeq, 42);
      const stale = await db.jobs.transition(
        job.id,
        { states: ["running"], attempt: 0 },
        {},
        { update: { attempt: 1, patch: { lastSeq: 99 } } },
      );
      assert.equal(stale, null);
      assert.equal((await db.jobs.attempts(job.id))[0].lastSeq, 42);
    });

    test("the queue is ordered by priority, then age, then id; depth counts the jobs ahead", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const other = await db.pools.create({ space, name: "other", description: "" });
      const sameTime = new Date("2030-02-01T00:00:00.000Z");
      const [idLow, idHigh] = [randomUUID(), randomUUID()].sort();
      const jobs = {
        oldLow: newJob(space, { resolvedPoolId: pool.id, priority: 0 }),
        urgent: newJob(space, { resolvedPoolId: pool.id, priority: 10 }),
        newLow: newJob(space, { resolvedPoolId: pool.id, priority: 0 }),
        tieA: newJob(space, { id: idHigh, resolvedPoolId: pool.id, priority: 5, createdAt: sameTime }),
        tieB: newJob(space, { id: idLow, resolvedPoolId: pool.id, priority: 5, createdAt: sameTime }),
        elsewhere: newJob(space, { resolvedPoolId: other.id, priority: 100 }),
        started: newJob(space, { resolvedPoolId: pool.id, priority: 50 }),
      };
      const records: Record<string, JobRecord> = {};
      for (const [key, job] of Object.entries(jobs)) records[key] = await db.jobs.create(job);
      await db.jobs.transition(jobs.started.id, { states: ["queued"] }, { state: "assigned", attempt: 1 });

      const queued = await db.jobs.queued(pool.id, 10);
      assert.deepEqual(
        queued.map((job) => job.id),
        [jobs.urgent.id, idLow, idHigh, jobs.oldLow.id, jobs.newLow.id],
      );
      assert.deepEqual(
        (await db.jobs.queued(pool.id, 2)).map((job) => job.id),
        [jobs.urgent.id, idLow],
      );
      assert.equal(await db.jobs.queueDepth(pool.id), 5);
      assert.equal(await db.jobs.queueDepth(pool.id, records.urgent), 0);
      assert.equal(await db.jobs.queueDepth(pool.id, records.tieA), 2);
      assert.equal(await db.jobs.queueDepth(pool.id, records.newLow), 4);
      // Counting stops at the limit: ahead of newLow are 4, ahead of tieA 2.
      assert.equal(await db.jobs.queueDepth(pool.id, records.newLow, 3), 3);
      assert.equal(await db.jobs.queueDepth(pool.id, records.tieA, 3), 2);
      assert.equal(await db.jobs.queueDepth(pool.id, undefined, 4), 4);
      const withQueue = await db.jobs.poolsWithQueuedJobs();
      assert.ok(withQueue.includes(pool.id) && withQueue.includes(other.id));
      assert.equal(new Set(withQueue).size, withQueue.length);
    });

    test("queueExpired returns queued jobs past their deadline, oldest deadline first", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      // Far past every other test's deadlines, so only this test's jobs qualify.
      const base = Date.parse("1990-01-01T00:00:00.000Z");
      const late = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, queueDeadline: new Date(base + 2000) }));
      const later = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, queueDeadline: new Date(base + 1000) }));
      const notYet = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, queueDeadline: new Date(base + 9000) }));
      const placed = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, queueDeadline: new Date(base) }));
      await db.jobs.transition(placed.id, { states: ["queued"] }, { state: "assigned", attempt: 1 });
      const expired = await db.jobs.queueExpired(new Date(base + 5000), 10);
      assert.deepEqual(
        expired.map((job) => job.id),
        [later.id, late.id],
      );
      assert.ok(!expired.some((job) => job.id === notYet.id));
      assert.equal((await db.jobs.queueExpired(new Date(base + 5000), 1)).length, 1);
    });

    test("queuedNotWaiting returns a pool's queued jobs without a deadline or past it, in queue order among themselves", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const other = await db.pools.create({ space, name: "other", description: "" });
      const base = Date.parse("2030-01-01T00:00:00.000Z");
      const at = (ms: number) => new Date(base + ms);
      const noDeadline = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: at(1) }));
      const past = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: at(2), queueDeadline: at(100) }));
      const exactlyNow = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: at(3), queueDeadline: at(500) }));
      const urgent = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: at(4), priority: 5 }));
      await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: at(5), queueDeadline: at(9000) })); // still waits
      await db.jobs.create(newJob(space, { resolvedPoolId: other.id, createdAt: at(6) })); // another pool
      const placed = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: at(7) }));
      await db.jobs.transition(placed.id, { states: ["queued"] }, { state: "assigned", attempt: 1 });
      const found = await db.jobs.queuedNotWaiting(pool.id, at(500), 10);
      assert.deepEqual(
        found.map((job) => job.id),
        [urgent.id, noDeadline.id, past.id, exactlyNow.id],
      );
      assert.equal((await db.jobs.queuedNotWaiting(pool.id, at(500), 2)).length, 2);
      assert.deepEqual(await db.jobs.queuedNotWaiting("not-a-uuid", at(500), 10), []);
    });

    test("list pages newest first with `after`, and filters", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const other = await db.pools.create({ space, name: "other", description: "" });
      const worker = await db.workers.create(workerInput(space, pool.id));
      const created: JobRecord[] = [];
      for (let i = 0; i < 23; i++) {
        created.push(
          await db.jobs.create(
            newJob(space, { resolvedPoolId: i % 2 === 0 ? pool.id : other.id, runId: i < 5 ? "run-a" : "run-b" }),
          ),
        );
      }
      // Two jobs created in the same millisecond still page cleanly (id breaks the tie).
      const tied = new Date(jobClock + 1000);
      created.push(await db.jobs.create(newJob(space, { createdAt: tied })));
      created.push(await db.jobs.create(newJob(space, { createdAt: tied })));
      const expected = [...created]
        .sort((x, y) => y.createdAt.getTime() - x.createdAt.getTime() || (x.id < y.id ? 1 : -1))
        .map((job) => job.id);

      const seen: string[] = [];
      let after: string | undefined;
      for (;;) {
        const page = await db.jobs.list({ space }, { limit: 10, after });
        seen.push(...page.map((job) => job.id));
        if (page.length < 10) break;
        after = page[page.length - 1].id;
      }
      assert.deepEqual(seen, expected);

      assert.equal((await db.jobs.list({ space, runId: "run-a" }, { limit: 100 })).length, 5);
      assert.equal((await db.jobs.list({ space, poolId: other.id }, { limit: 100 })).length, 11);
      await db.jobs.transition(created[0].id, { states: ["queued"] }, { state: "running", attempt: 1, workerId: worker.id });
      assert.deepEqual(
        (await db.jobs.list({ space, state: "running" }, { limit: 100 })).map((job) => job.id),
        [created[0].id],
      );
      assert.deepEqual(
        (await db.jobs.list({ space, workerId: worker.id }, { limit: 100 })).map((job) => job.id),
        [created[0].id],
      );
      assert.deepEqual(await db.jobs.list({ space: freshSpace() }, { limit: 10 }), []);
    });

    test("queueStats counts the pool's queued jobs and the oldest one's creation time", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const other = await db.pools.create({ space, name: "other", description: "" });
      assert.deepEqual(await db.jobs.queueStats(pool.id), { queued: 0, oldestQueuedAt: null });
      const oldest = new Date("2031-03-01T00:00:00.123Z");
      const placed = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: new Date("2031-02-01T00:00:00.000Z") }));
      await db.jobs.transition(placed.id, { states: ["queued"] }, { state: "assigned", attempt: 1 });
      await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: new Date("2031-03-05T00:00:00.000Z"), priority: 9 }));
      await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: oldest }));
      await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, createdAt: new Date("2031-03-02T00:00:00.000Z") }));
      await db.jobs.create(newJob(space, { resolvedPoolId: other.id, createdAt: new Date("2020-01-01T00:00:00.000Z") }));
      const stats = await db.jobs.queueStats(pool.id);
      assert.equal(stats.queued, 3);
      assert.ok(stats.oldestQueuedAt instanceof Date);
      assert.equal(stats.oldestQueuedAt.toISOString(), oldest.toISOString());
      assert.equal(stats.queued, await db.jobs.queueDepth(pool.id));
      assert.equal((await db.jobs.queueStats(other.id)).queued, 1);
      assert.deepEqual(await db.jobs.queueStats(randomUUID()), { queued: 0, oldestQueuedAt: null });
      assert.deepEqual(await db.jobs.queueStats("not-a-uuid"), { queued: 0, oldestQueuedAt: null });
    });

    test("jobs keep their target, also after the target is gone, and list filters by it", async () => {
      const space = freshSpace();
      const pool = await db.ensureSpace(space);
      const aks = await db.targets.create({ space, name: "aks-prod", description: "", defaultPoolId: pool.id });
      const web = await db.targets.create({ space, name: "web-eu", description: "", defaultPoolId: null });
      const onAks = [
        await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, targetId: aks.id, poolRule: "target_default" })),
        await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, targetId: aks.id, poolRule: "target_default" })),
      ];
      const onWeb = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id, targetId: web.id }));
      const none = await db.jobs.create(newJob(space, { resolvedPoolId: pool.id }));
      assert.equal(onAks[0].targetId, aks.id);
      assert.equal((await db.jobs.get(onAks[0].id))?.targetId, aks.id);
      assert.equal((await db.jobs.get(none.id))?.targetId, null);
      assert.deepEqual(
        (await db.jobs.list({ space, targetId: aks.id }, { limit: 10 })).map((job) => job.id),
        [onAks[1].id, onAks[0].id],
      );
      assert.deepEqual(
        (await db.jobs.list({ space, targetId: web.id }, { limit: 10 })).map((job) => job.id),
        [onWeb.id],
      );
      assert.deepEqual(await db.jobs.list({ space, targetId: randomUUID() }, { limit: 10 }), []);
      assert.deepEqual(await db.jobs.list({ space, targetId: "not-a-uuid" }, { limit: 10 }), []);
      assert.equal((await db.jobs.list({ space }, { limit: 10 })).length, 4);

      // No foreign key: the job's history outlives the target.
      assert.equal(await db.targets.delete(aks.id), true);
      assert.equal((await db.jobs.get(onAks[0].id))?.targetId, aks.id);
      assert.equal((await db.jobs.list({ space, targetId: aks.id }, { limit: 10 })).length, 2);
    });
  });

  describe("logs", () => {
    test("append skips chunks it already has and reads back in seq order", async () => {
      const jobId = randomUUID();
      assert.equal(await db.logs.maxSeq(jobId, 1), 0);
      assert.equal(await db.logs.append([chunk(jobId, 1, 3, "three"), chunk(jobId, 1, 1, "one"), chunk(jobId, 1, 2, "two")]), 3);
      assert.equal(await db.logs.append([chunk(jobId, 1, 2, "two again"), chunk(jobId, 1, 4, "four")]), 1);
      assert.equal(await db.logs.append([]), 0);
      await db.logs.append([chunk(jobId, 2, 1, "other attempt")]);

      const all = await db.logs.read(jobId, 1, 0, 100);
      assert.deepEqual(
        all.map((c) => c.seq),
        [1, 2, 3, 4],
      );
      assert.equal(new TextDecoder().decode(all[1].data), "two");
      assert.deepEqual(all[0], chunk(jobId, 1, 1, "one"));
      assert.deepEqual(
        (await db.logs.read(jobId, 1, 2, 2)).map((c) => c.seq),
        [2, 3],
      );
      assert.equal(await db.logs.maxSeq(jobId, 1), 4);
      assert.equal(await db.logs.maxSeq(jobId, 2), 1);
    });

    test("binary data survives and large batches are inserted whole", async () => {
      const jobId = randomUUID();
      const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
      const many: LogChunkRecord[] = Array.from({ length: 2500 }, (_, i) => ({
        ...chunk(jobId, 1, i + 1, ""),
        data: i === 0 ? bytes : new TextEncoder().encode(`line ${i + 1}\n`),
      }));
      assert.equal(await db.logs.append(many), 2500);
      assert.equal(await db.logs.append(many), 0);
      const [first] = await db.logs.read(jobId, 1, 1, 1);
      assert.deepEqual([...first.data], [...bytes]);
      const page = await db.logs.read(jobId, 1, 2001, 1000);
      assert.equal(page.length, 500);
      assert.equal(new TextDecoder().decode(page[499].data), "line 2500\n");
      assert.equal(await db.logs.maxSeq(jobId, 1), 2500);
    });
  });
});

function workerInput(
  space: string,
  poolId: string,
  overrides: Partial<Parameters<Database["workers"]["create"]>[0]> = {},
): Parameters<Database["workers"]["create"]>[0] {
  const name = overrides.name ?? "worker";
  return {
    space,
    poolId,
    name,
    labels: ["linux"],
    capacity: 2,
    credentialHash: `cred-${name}-${space}`,
    hostname: "box-1",
    agentVersion: "0.1.0",
    ...overrides,
  };
}

function attemptRecord(jobId: string, attempt: number, workerId: string, assignedAt: Date) {
  return {
    jobId,
    attempt,
    workerId,
    state: "assigned" as const,
    assignedAt,
    acceptedAt: null,
    endedAt: null,
    outcome: null,
    exitCode: null,
    lastSeq: 0,
  };
}
