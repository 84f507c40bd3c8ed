// What heartbeats cost Redis, counted exactly on a redis-server of the
// test's own (the shared one carries other suites' traffic): a replica's
// heartbeats are coalesced into one script call per short window whose
// command count does not grow with the number of idle workers. And the
// coalescing itself (src/stores/redis/heartbeat-batch.ts) with a scripted
// runner: who gets which answer, when a batch goes out, failures.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Redis } from "ioredis";
import { createHeartbeatBatcher } from "../../src/stores/redis/heartbeat-batch.ts";
import { leaseKeys } from "../../src/stores/redis/lease-keys.ts";
import type { ScriptRunner } from "../../src/stores/redis/lease-scripts.ts";
import { createRedisLeaseStore } from "../../src/stores/redis/redis-lease-store.ts";
import type { LeaseStore } from "../../src/stores/lease-store.ts";
import { startPrivateRedis, type PrivateRedis } from "../faults/harness/private-redis.ts";

const POOL = "pool-a";
const REPLICA = "replica-1";
const SESSION = "session-1";
const HEARTBEAT_TTL_MS = 15_000;
const LEASE_TTL_MS = 30_000;

describe("redis heartbeats, counted on a private redis-server", () => {
  let redis: PrivateRedis;
  let info: Redis;
  let store: LeaseStore;
  let prefix = 0;

  before(async () => {
    redis = await startPrivateRedis();
    info = redis.client();
  });
  after(async () => {
    info?.disconnect();
    await redis?.stop();
  });

  async function counted<T>(fn: () => Promise<T>): Promise<{ result: T; commands: number; scripts: number }> {
    const read = async () => {
      const [stats, commandstats] = await Promise.all([info.info("stats"), info.info("commandstats")]);
      const evalsha = Number(/^cmdstat_evalsha:calls=(\d+)/m.exec(commandstats)?.[1] ?? 0);
      const evals = Number(/^cmdstat_eval:calls=(\d+)/m.exec(commandstats)?.[1] ?? 0);
      return { total: Number(/^total_commands_processed:(\d+)/m.exec(stats)![1]), scripts: evalsha + evals };
    };
    const before = await read();
    const result = await fn();
    const after = await read();
    // The two INFO calls of `before` are counted in `after`.
    return { result, commands: after.total - before.total - 2, scripts: after.scripts - before.scripts };
  }

  async function openStore(): Promise<LeaseStore> {
    store = createRedisLeaseStore({ url: redis.url, keyPrefix: `hb-${++prefix}:` });
    await store.start();
    return store;
  }

  test("1,000 idle workers heartbeating at once cost one script call and a fixed handful of commands", async () => {
    const store = await openStore();
    try {
      const ids = Array.from({ length: 1000 }, (_, i) => `w${i}`);
      for (const workerId of ids) {
        await store.attach({ workerId, poolId: POOL, capacity: 4, labels: [], acceptsWork: true }, SESSION, REPLICA, HEARTBEAT_TTL_MS);
      }
      const before = await store.workerStatus(["w0"]);
      await sleep(5);
      const { result, commands, scripts } = await counted(() =>
        Promise.all(ids.map((id) => store.heartbeat(id, SESSION, HEARTBEAT_TTL_MS, LEASE_TTL_MS))),
      );
      assert.ok(result.every(Boolean), "every session still holds its worker");
      assert.equal(scripts, 1, "one script call for the whole batch");
      // EVALSHA, TIME, HMGET sessions, ZADD heartbeats, SMISMEMBER leased-workers, ZMSCORE + ZADD pool-healthy.
      assert.ok(commands <= 8, `${commands} commands for 1,000 heartbeats`);
      const after = await store.workerStatus(["w0", "w999"]);
      assert.ok(after.get("w0")!.lastHeartbeatMs! > before.get("w0")!.lastHeartbeatMs!, "the heartbeat moved");
      assert.ok(after.get("w999")!.fresh);
    } finally {
      await store.close();
    }
  });

  test("workers holding leases, and a superseded session, cost commands only for themselves", async () => {
    const store = await openStore();
    try {
      const ids = Array.from({ length: 200 }, (_, i) => `w${i}`);
      for (const workerId of ids) {
        await store.attach({ workerId, poolId: POOL, capacity: 1, labels: [], acceptsWork: true }, SESSION, REPLICA, HEARTBEAT_TTL_MS);
      }
      // Ten leases, on ten different workers (capacity 1), with a short TTL.
      const holders = new Map<string, string>();
      for (let n = 0; n < 10; n++) {
        const placed = await store.acquire({ poolId: POOL, jobId: `j${n}`, attempt: 1, runId: "", requiredLabels: [], exclusive: false, leaseTtlMs: 400 });
        assert.ok(placed.ok);
        holders.set(placed.workerId, `j${n}`);
      }
      await store.attach({ workerId: "w150", poolId: POOL, capacity: 1, labels: [], acceptsWork: true }, "newer", REPLICA, HEARTBEAT_TTL_MS);
      const { result, commands, scripts } = await counted(() =>
        Promise.all(ids.map((id) => store.heartbeat(id, SESSION, HEARTBEAT_TTL_MS, LEASE_TTL_MS))),
      );
      assert.deepEqual(
        ids.filter((_, i) => !result[i]),
        ["w150"],
      );
      assert.equal(scripts, 1);
      // The idle handful, plus one SMEMBERS per lease holder and one ZMSCORE + ZADD XX for all their leases.
      assert.ok(commands <= 8 + holders.size + 2, `${commands} commands`);
      await sleep(500);
      for (const [, jobId] of holders) assert.notEqual(await store.lease(jobId, 1), null, `${jobId} was extended past its 400 ms`);
    } finally {
      await store.close();
    }
  });

  test("leases taken before an upgrade (no leased-workers set) are extended by heartbeats after it", async () => {
    const keyPrefix = `hb-${++prefix}:`;
    const old = createRedisLeaseStore({ url: redis.url, keyPrefix });
    await old.start();
    await old.attach({ workerId: "a", poolId: POOL, capacity: 1, labels: [], acceptsWork: true }, SESSION, REPLICA, HEARTBEAT_TTL_MS);
    const placed = await old.acquire({ poolId: POOL, jobId: "j", attempt: 1, runId: "", requiredLabels: [], exclusive: false, leaseTtlMs: 400 });
    assert.ok(placed.ok);
    await old.close();
    // As an older store left it: no leased-workers set, no layout mark.
    await info.del(`${keyPrefix}leased-workers`, `${keyPrefix}layout`);
    const store = createRedisLeaseStore({ url: redis.url, keyPrefix });
    await store.start();
    try {
      await store.attach({ workerId: "a", poolId: POOL, capacity: 1, labels: [], acceptsWork: true }, "s2", REPLICA, HEARTBEAT_TTL_MS);
      for (let n = 0; n < 6; n++) {
        assert.equal(await store.heartbeat("a", "s2", HEARTBEAT_TTL_MS, 400), true);
        await sleep(100);
      }
      assert.notEqual(await store.lease("j", 1), null, "the lease outlived its 400 ms on heartbeats");
    } finally {
      await store.close();
    }
  });

  test("a worker that went stale is healthy again after one heartbeat", async () => {
    const store = await openStore();
    try {
      await store.attach({ workerId: "a", poolId: POOL, capacity: 1, labels: [], acceptsWork: true }, SESSION, REPLICA, 100);
      await sleep(150);
      const request = { poolId: POOL, jobId: "j", attempt: 1, runId: "", requiredLabels: [], exclusive: false, leaseTtlMs: LEASE_TTL_MS };
      assert.deepEqual(await store.acquire(request), { ok: false, code: "no_healthy_worker", healthy: 0, matching: 0 });
      assert.equal(await store.heartbeat("a", SESSION, HEARTBEAT_TTL_MS, LEASE_TTL_MS), true);
      const placed = await store.acquire(request);
      assert.ok(placed.ok && placed.workerId === "a");
    } finally {
      await store.close();
    }
  });
});

describe("heartbeat batcher", () => {
  const keys = leaseKeys("p:");
  type Call = { args: (string | number)[]; at: number };

  function scripted(reply: (beats: unknown[][]) => unknown = () => []) {
    const calls: Call[] = [];
    const run: ScriptRunner = async (name, _keys, args) => {
      assert.equal(name, "heartbeat-many");
      calls.push({ args, at: performance.now() });
      return reply(JSON.parse(String(args[1])) as unknown[][]);
    };
    return { run, calls };
  }

  test("heartbeats of one window go out together; each gets its own answer", async () => {
    const { run, calls } = scripted((beats) => beats.flatMap((beat, i) => (beat[0] === "b" ? [i + 1] : [])));
    const batcher = createHeartbeatBatcher(run, keys);
    const answers = await Promise.all(["a", "b", "c"].map((id) => batcher.heartbeat(id, "s", 1000, 1000)));
    assert.deepEqual(answers, [true, false, true]);
    assert.equal(calls.length, 1);
    await batcher.close();
  });

  test("a heartbeat waits at most a tenth of the shorter TTL (capped at 1 s), and carries its age", async () => {
    const { run, calls } = scripted();
    const batcher = createHeartbeatBatcher(run, keys);
    batcher.attached("a", "pool-1", 600);
    const sentAt = performance.now();
    await batcher.heartbeat("a", "s", 600, 60_000);
    const waited = calls[0]!.at - sentAt;
    assert.ok(waited >= 55 && waited < 400, `waited ${waited} ms for a 60 ms window`);
    const [beat] = JSON.parse(String(calls[0]!.args[1])) as unknown[][];
    assert.equal(beat![0], "a");
    assert.ok(Math.abs((beat![2] as number) - waited) < 20, `age ${beat![2]} ms`);
    assert.equal(beat![5], "pool-1", "the pool known from attach");
    assert.equal(beat![6], 0, "the TTL is the one attached with");
    await batcher.close();
  });

  test("a store failure rejects every heartbeat of the batch; the next batch goes out again", async () => {
    let fail = true;
    const { run, calls } = scripted(() => {
      if (fail) throw new Error("redis down");
      return [];
    });
    const batcher = createHeartbeatBatcher(run, keys);
    const results = await Promise.allSettled(["a", "b"].map((id) => batcher.heartbeat(id, "s", 100, 100)));
    assert.deepEqual(results.map((r) => r.status), ["rejected", "rejected"]);
    fail = false;
    assert.equal(await batcher.heartbeat("a", "s", 100, 100), true);
    assert.equal(calls.length, 2);
    await batcher.close();
  });

  test("close records the open batch at once", async () => {
    const { run, calls } = scripted();
    const batcher = createHeartbeatBatcher(run, keys);
    const beat = batcher.heartbeat("a", "s", 15_000, 30_000);
    const closedAt = performance.now();
    await batcher.close();
    assert.equal(await beat, true);
    assert.equal(calls.length, 1);
    assert.ok(calls[0]!.at - closedAt < 50);
  });
});
