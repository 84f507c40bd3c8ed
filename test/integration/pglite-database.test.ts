// The embedded default: the same Database on PGlite, persisted in a data
// directory. Open (which migrates), write, close, reopen, and find it all.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { AlreadyExistsError } from "../../src/stores/database.ts";
import { migrations } from "../../src/stores/postgres/migrations/index.ts";
import { openDatabase } from "../../src/stores/postgres/open-database.ts";

function capturingLogger() {
  const events: Record<string, unknown>[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => events.push(JSON.parse(line)) });
  return { logger, events };
}

describe("PGlite database", () => {
  let dir: string;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "muster-pglite-"));
  });

  after(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  test("migrates a new data directory, and keeps the data across a reopen", async () => {
    const dataDir = path.join(dir, "data");
    const first = capturingLogger();
    const db = await openDatabase({ dataDir, logger: first.logger });
    const migrated = first.events.find((event) => event.event === "database_migrated");
    assert.equal(migrated?.driver, "pglite");
    assert.deepEqual(migrated?.applied, migrations.map((migration) => migration.name));

    const defaultPool = await db.ensureSpace("default");
    const pool = await db.pools.create({ space: "default", name: "builders", description: "CI" });
    await assert.rejects(db.pools.create({ space: "default", name: "builders", description: "" }), AlreadyExistsError);
    const worker = await db.workers.create({
      space: "default",
      poolId: pool.id,
      name: "w1",
      labels: ["linux"],
      capacity: 2,
      credentialHash: "cred-w1",
      hostname: "box",
      agentVersion: "0.1.0",
    });
    const jobId = randomUUID();
    await db.jobs.create({
      id: jobId,
      space: "default",
      name: "plan",
      script: "tofu plan",
      env: { TF_IN_AUTOMATION: "1" },
      requestedPoolId: pool.id,
      targetId: null,
      runId: "run-1",
      requiredLabels: ["linux"],
      priority: 1,
      exclusive: false,
      timeoutMs: null,
      queueTimeoutMs: null,
      maxAttempts: 2,
      resolvedPoolId: pool.id,
      poolRule: "explicit",
      poolReason: "named by the step",
      queueDeadline: null,
      createdAt: new Date("2030-01-01T00:00:00.000Z"),
    });
    const assignedAt = new Date("2030-01-01T00:00:01.000Z");
    const assigned = await db.jobs.transition(
      jobId,
      { states: ["queued"] },
      { state: "assigned", attempt: 1, workerId: worker.id },
      {
        insert: {
          jobId,
          attempt: 1,
          workerId: worker.id,
          state: "assigned",
          assignedAt,
          acceptedAt: null,
          endedAt: null,
          outcome: null,
          exitCode: null,
          lastSeq: 0,
        },
      },
    );
    assert.equal(assigned?.state, "assigned");
    assert.equal(await db.jobs.transition(jobId, { states: ["queued"] }, { state: "failed" }), null);
    const chunks = [1, 2, 3].map((seq) => ({
      jobId,
      attempt: 1,
      seq,
      stream: "stdout" as const,
      data: new TextEncoder().encode(`line ${seq}\n`),
      time: new Date(assignedAt.getTime() + seq),
    }));
    assert.equal(await db.logs.append(chunks), 3);
    assert.equal(await db.logs.append(chunks), 0);
    await db.close();

    const second = capturingLogger();
    const reopened = await openDatabase({ dataDir, logger: second.logger });
    try {
      assert.deepEqual(second.events.find((event) => event.event === "database_migrated")?.applied, []);
      assert.deepEqual(await reopened.pools.defaultPool("default"), defaultPool);
      assert.equal((await reopened.pools.get(pool.id))?.workerCount, 1);
      assert.deepEqual(await reopened.workers.byCredentialHash("cred-w1"), worker);
      assert.deepEqual(await reopened.jobs.get(jobId), assigned);
      assert.equal((await reopened.jobs.attempts(jobId)).length, 1);
      assert.deepEqual(await reopened.logs.read(jobId, 1, 0, 10), chunks);
      assert.equal(await reopened.logs.maxSeq(jobId, 1), 3);
    } finally {
      await reopened.close();
    }
  });

  test("a throwaway in-memory database works too", async () => {
    const db = await openDatabase({ dataDir: "memory://" });
    try {
      const pool = await db.ensureSpace("default");
      assert.equal(pool.isDefault, true);
      // Targets and the pool-delete check against them work on PGlite too.
      const linux = await db.pools.create({ space: "default", name: "linux", description: "" });
      const target = await db.targets.create({ space: "default", name: "aks-prod", description: "", defaultPoolId: linux.id });
      assert.deepEqual(await db.targets.list("default"), [target]);
      await assert.rejects(db.pools.delete(linux.id, { force: false }), /default pool of target aks-prod/);
      assert.equal(await db.pools.delete(linux.id, { force: false, clearTargetDefaults: true }), true);
      assert.equal((await db.targets.get(target.id))?.defaultPoolId, null);
      assert.deepEqual(await db.jobs.queueStats(pool.id), { queued: 0, oldestQueuedAt: null });
    } finally {
      await db.close();
    }
  });
});
