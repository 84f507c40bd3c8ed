// The invariant checker itself: it must see a gap in a log, a stale attempt
// with an outcome, and a lease Redis holds that Postgres does not.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { Redis } from "ioredis";
import { createTestDatabase, TEST_DATABASE_URL } from "../support/postgres.ts";
import { deleteKeysWithPrefix, REDIS_URL, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";
import { checkInvariants } from "./harness/invariants.ts";

test("the invariant checker reports gaps, stale outcomes and orphan leases", { timeout: 30_000 }, async () => {
  await requireRedis();
  const { db, schema, cleanup } = await createTestDatabase({ label: "inv" });
  const prefix = uniqueKeyPrefix("inv");
  const redis = new Redis(REDIS_URL);
  try {
    const pool = await db.ensureSpace("default");
    const id = randomUUID();
    const workerId = randomUUID();
    await db.jobs.create({
      id, space: "default", name: "j", script: "true", env: {}, requestedPoolId: null, targetId: null, runId: "", requiredLabels: [], priority: 0,
      exclusive: false, timeoutMs: null, queueTimeoutMs: null, maxAttempts: 2, resolvedPoolId: pool.id, poolRule: "space_default",
      poolReason: "", queueDeadline: null, createdAt: new Date(),
    });
    const attempt = (n: number) => ({ jobId: id, attempt: n, workerId, state: "assigned" as const, assignedAt: new Date(), acceptedAt: null, endedAt: null, outcome: null, exitCode: null, lastSeq: 0 });
    await db.jobs.transition(id, { states: ["queued"], attempt: 0 }, { state: "assigned", attempt: 1, workerId }, { insert: attempt(1) });
    await db.jobs.transition(id, { states: ["assigned"], attempt: 1 }, { state: "queued", workerId: null }, { update: { attempt: 1, patch: { state: "ended", outcome: "succeeded" } } });
    await db.jobs.transition(id, { states: ["queued"], attempt: 1 }, { state: "succeeded", attempt: 2, workerId }, { insert: { ...attempt(2), state: "ended", outcome: "succeeded" } });
    const chunk = (seq: number) => ({ jobId: id, attempt: 2, seq, stream: "stdout" as const, data: Buffer.from("x"), time: new Date() });
    await db.logs.append([chunk(1), chunk(3)]);
    await redis.hset(`${prefix}leases`, `${randomUUID()}:1`, workerId);

    const report = await checkInvariants({ databaseUrl: TEST_DATABASE_URL, schema, redisUrl: REDIS_URL, redisPrefix: prefix });
    const text = report.violations.join("\n");
    assert.match(text, /not contiguous/);
    assert.match(text, /stale attempt #1 recorded outcome succeeded/);
    assert.match(text, /Redis holds lease/);
  } finally {
    redis.disconnect();
    await deleteKeysWithPrefix(prefix);
    await cleanup();
  }
});
