// The Redis lease store's key layout (src/stores/redis/lua/includes/lease-state.lua):
// the selection index agrees with the worker hashes after any mix of
// operations, a store rebuilt from scratch (attach + restoreLease, as after a
// Redis loss) indexes the same workers the same way, and data in the layout
// before pool-free (pool-avail / pool-room / sel) is brought over at start
// with the selection order kept.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Redis } from "ioredis";
import type { AcquireRequest, LeaseStore, PlacementWorker } from "../../src/stores/lease-store.ts";
import { createRedisLeaseStore } from "../../src/stores/redis/redis-lease-store.ts";
import { REDIS_URL, deleteKeysWithPrefix, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";

const POOL = "pool-a";
const SEQ_SPAN = 2 ** 43;
const TTL_MS = 60_000;

let redis: Redis;
const prefixes: string[] = [];

before(async () => {
  await requireRedis();
  redis = new Redis(REDIS_URL);
});

after(async () => {
  for (const prefix of prefixes) await deleteKeysWithPrefix(prefix);
  redis.disconnect();
});

async function openStore(): Promise<{ store: LeaseStore; prefix: string }> {
  const prefix = uniqueKeyPrefix("lease-layout");
  prefixes.push(prefix);
  const store = createRedisLeaseStore({ url: REDIS_URL, keyPrefix: prefix });
  await store.start();
  return { store, prefix };
}

function worker(workerId: string, overrides: Partial<PlacementWorker> = {}): PlacementWorker {
  return { workerId, poolId: POOL, capacity: 3, labels: [], acceptsWork: true, ...overrides };
}

function job(jobId: string, overrides: Partial<AcquireRequest> = {}): AcquireRequest {
  return { poolId: POOL, jobId, attempt: 1, runId: "", requiredLabels: [], exclusive: false, leaseTtlMs: TTL_MS, ...overrides };
}

/** pool-free as {workerId: [leases, seq]}. */
async function freeIndex(prefix: string, poolId = POOL): Promise<Record<string, [number, number]>> {
  const flat = await redis.zrange(`${prefix}pool-free:${poolId}`, "0", "-1", "WITHSCORES");
  const index: Record<string, [number, number]> = {};
  for (let i = 0; i < flat.length; i += 2) {
    const score = Number(flat[i + 1]);
    index[flat[i]!] = [Math.floor(score / SEQ_SPAN), score % SEQ_SPAN];
  }
  return index;
}

/** Every worker: in pool-free exactly when healthy with room, at (its count, its seq); its count is its lease set's size. */
async function assertIndexAgrees(prefix: string, workerIds: string[]): Promise<void> {
  const free = await freeIndex(prefix);
  const healthy = new Set(await redis.zrange(`${prefix}pool-healthy:${POOL}`, "0", "-1"));
  const holders = await redis.hgetall(`${prefix}leases`);
  for (const workerId of workerIds) {
    const [pool, capacity, accepts, leases, exclusive, seq] = await redis.hmget(
      `${prefix}worker:${workerId}`,
      "pool",
      "capacity",
      "accepts",
      "leases",
      "exclusive",
      "seq",
    );
    const held = await redis.smembers(`${prefix}worker-leases:${workerId}`);
    assert.equal(Number(leases ?? 0), held.length, `${workerId}: count vs lease set`);
    for (const leaseId of held) assert.equal(holders[leaseId], workerId, `${leaseId} held by ${workerId}`);
    if (held.length > 0) assert.equal(await redis.sismember(`${prefix}leased-workers`, workerId), 1, `${workerId} in leased-workers`);
    const shouldBeFree = pool === POOL && accepts === "1" && healthy.has(workerId) && held.length < Number(capacity) && exclusive === null;
    assert.deepEqual(free[workerId], shouldBeFree ? [held.length, Number(seq ?? 0)] : undefined, `${workerId} in pool-free`);
  }
}

describe("redis lease store layout", () => {
  test("pool-free agrees with the worker hashes after pages, single decisions, releases, updates and exclusive leases", async () => {
    const { store, prefix } = await openStore();
    try {
      const ids = ["a", "b", "c", "d", "e"];
      for (const id of ids) {
        await store.attach(worker(id, { capacity: id === "e" ? 1 : 3, labels: id < "c" ? ["gpu"] : [] }), "s", "r", TTL_MS);
      }
      const live: string[] = [];
      let n = 0;
      for (let round = 0; round < 5; round++) {
        const page = [job(`p${n++}`), job(`p${n++}`, { requiredLabels: ["gpu"] }), job(`p${n++}`, { exclusive: true }), job(`p${n++}`, { runId: "r" })];
        page.push(job(`p${n++}`), job(`p${n++}`), job(`p${n++}`));
        for (const [i, result] of (await store.acquireMany(page)).entries()) if (result !== "held" && result.ok) live.push(page[i]!.jobId);
        const single = job(`s${n++}`, { runId: "r" });
        if ((await store.acquire(single)).ok) live.push(single.jobId);
        await assertIndexAgrees(prefix, ids);
        for (const jobId of live.splice(0, 3)) assert.equal(await store.release(jobId, 1), true);
        if (round === 2) await store.updateWorker(worker("c", { capacity: 1 }));
        if (round === 3) await store.updateWorker(worker("d", { acceptsWork: false }));
        await assertIndexAgrees(prefix, ids);
      }
    } finally {
      await store.close();
    }
  });

  test("a store rebuilt by attach and restoreLease indexes the same workers at the same counts", async () => {
    const original = await openStore();
    const rebuilt = await openStore();
    try {
      const workers = ["a", "b", "c", "d"].map((id) => worker(id, { capacity: 2 }));
      for (const w of workers) await original.store.attach(w, "s", "r", TTL_MS);
      const page = Array.from({ length: 6 }, (_, i) => job(`j${i}`));
      const results = await original.store.acquireMany(page);
      for (const w of workers) await rebuilt.store.attach(w, "s", "r", TTL_MS);
      for (const [i, result] of results.entries()) {
        assert.ok(result !== "held" && result.ok);
        await rebuilt.store.restoreLease({ jobId: page[i]!.jobId, attempt: 1, workerId: result.workerId }, TTL_MS);
      }
      const counts = (index: Record<string, [number, number]>) => Object.fromEntries(Object.entries(index).map(([id, [leases]]) => [id, leases]));
      assert.deepEqual(counts(await freeIndex(rebuilt.prefix)), counts(await freeIndex(original.prefix)));
      await assertIndexAgrees(original.prefix, ["a", "b", "c", "d"]);
      await assertIndexAgrees(rebuilt.prefix, ["a", "b", "c", "d"]);
    } finally {
      await original.store.close();
      await rebuilt.store.close();
    }
  });

  // The two layouts before pool-free: the first kept a session's freshness
  // in its worker hash ("hb"); the next one (heartbeat batches) in the
  // heartbeats zset, with sessions in a hash. Both had pool-avail, pool-room
  // and sel.
  for (const layout of ["freshness in the worker hash", "the heartbeats zset"] as const) {
    test(`data in the layout before pool-free (${layout}) is brought over at start, selection order kept`, async () => {
      const prefix = uniqueKeyPrefix("lease-layout");
      prefixes.push(prefix);
      const now = Number((await redis.time())[0]) * 1000;
      const sel = (seq: number, id: string) => `${String(seq).padStart(16, "0")}:${id}`;
      // As the older store left them: a, b, c attached with one lease each
      // (a leased last, then c, then b), d never leased; c is full.
      const old: Record<string, { seq: number; leases: number; capacity: number }> = {
        a: { seq: 9, leases: 1, capacity: 3 },
        b: { seq: 4, leases: 1, capacity: 3 },
        c: { seq: 7, leases: 1, capacity: 1 },
        d: { seq: 0, leases: 0, capacity: 3 },
      };
      for (const [id, w] of Object.entries(old)) {
        const fields = { pool: POOL, capacity: w.capacity, labels: "\n\n", accepts: "1", session: "s", replica: "r", hbTtl: TTL_MS, leases: w.leases, sel: sel(w.seq, id) };
        if (layout === "the heartbeats zset") {
          await redis.hset(`${prefix}worker:${id}`, fields);
          await redis.hset(`${prefix}sessions`, id, "s");
          await redis.zadd(`${prefix}heartbeats`, now + TTL_MS, id);
        } else {
          await redis.hset(`${prefix}worker:${id}`, { ...fields, hb: now });
        }
        await redis.zadd(`${prefix}pool-healthy:${POOL}`, now + TTL_MS, id);
        if (w.leases > 0) {
          await redis.hset(`${prefix}leases`, `old-${id}:1`, id);
          await redis.zadd(`${prefix}lease-expiry`, now + TTL_MS, `old-${id}:1`);
          await redis.sadd(`${prefix}worker-leases:${id}`, `old-${id}:1`);
        }
        if (w.leases < w.capacity) {
          await redis.zadd(`${prefix}pool-avail:${POOL}`, w.leases, sel(w.seq, id));
          await redis.sadd(`${prefix}pool-room:${POOL}`, id);
        }
      }
      await redis.set(`${prefix}lease-seq`, 9);

      const store = createRedisLeaseStore({ url: REDIS_URL, keyPrefix: prefix });
      await store.start();
      try {
        assert.equal(await redis.exists(`${prefix}pool-avail:${POOL}`, `${prefix}pool-room:${POOL}`), 0, "old sets deleted");
        for (const id of Object.keys(old)) assert.equal(await redis.hexists(`${prefix}worker:${id}`, "sel"), 0, `${id}'s sel converted`);
        assert.equal(await redis.get(`${prefix}layout`), "3");
        assert.deepEqual((await redis.smembers(`${prefix}leased-workers`)).sort(), ["a", "b", "c"]);
        if (layout === "freshness in the worker hash") {
          // Its sessions are unknown to this layout: each agent is refused at
          // its next heartbeat and attaches again, as after any older replica.
          assert.equal(await store.heartbeat("a", "s", TTL_MS, TTL_MS), false);
          for (const [id, w] of Object.entries(old)) await store.attach(worker(id, { capacity: w.capacity }), "s2", "r", TTL_MS);
        }
        await assertIndexAgrees(prefix, ["a", "b", "c", "d"]);
        assert.deepEqual(await freeIndex(prefix), { a: [1, 9], b: [1, 4], d: [0, 0] });
        // d (no lease), then b (leased before a), then a; c is full.
        const order = [];
        for (const jobId of ["j1", "j2", "j3"]) {
          const result = await store.acquire(job(jobId));
          assert.ok(result.ok);
          order.push(result.workerId);
        }
        assert.deepEqual(order, ["d", "b", "a"]);
        // A second start finds the layout current and changes nothing.
        const before = await freeIndex(prefix);
        const again = createRedisLeaseStore({ url: REDIS_URL, keyPrefix: prefix });
        await again.start();
        await again.close();
        assert.deepEqual(await freeIndex(prefix), before);
      } finally {
        await store.close();
      }
    });
  }
});
