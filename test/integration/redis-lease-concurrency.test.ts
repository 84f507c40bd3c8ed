// Concurrent placement against the real Redis: several store instances (one
// connection each, like replicas) sharing a key prefix race for the same
// pool. The Lua scripts must keep every decision atomic.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { AcquireRequest, LeaseStore } from "../../src/stores/lease-store.ts";
import { createRedisLeaseStore } from "../../src/stores/redis/redis-lease-store.ts";
import { REDIS_URL, deleteKeysWithPrefix, keysWithPrefix, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";

const REPLICAS = 4;
const POOL = "pool-concurrent";
const TTL_MS = 60_000;

interface Cluster {
  prefix: string;
  stores: LeaseStore[];
  close(): Promise<void>;
}

async function startReplicas(label: string): Promise<Cluster> {
  const prefix = uniqueKeyPrefix(label);
  const stores = Array.from({ length: REPLICAS }, () => createRedisLeaseStore({ url: REDIS_URL, keyPrefix: prefix }));
  await Promise.all(stores.map((store) => store.start()));
  return {
    prefix,
    stores,
    async close() {
      await Promise.all(stores.map((store) => store.close()));
      await deleteKeysWithPrefix(prefix);
    },
  };
}

async function attachWorkers(cluster: Cluster, count: number, capacity: number): Promise<string[]> {
  const workerIds = Array.from({ length: count }, (_, i) => `worker-${String(i).padStart(2, "0")}`);
  await Promise.all(
    workerIds.map((workerId, i) =>
      cluster.stores[i % REPLICAS].attach(
        { workerId, poolId: POOL, capacity, labels: [], acceptsWork: true },
        `session-${workerId}`,
        `replica-${i % REPLICAS}`,
        TTL_MS,
      ),
    ),
  );
  return workerIds;
}

function job(i: number): AcquireRequest {
  return {
    poolId: POOL,
    jobId: `job-${i}`,
    attempt: 1,
    runId: "",
    requiredLabels: [],
    exclusive: false,
    leaseTtlMs: TTL_MS,
  };
}

async function leaseCounts(store: LeaseStore, workerIds: string[]): Promise<number[]> {
  const statuses = await store.workerStatus(workerIds);
  return workerIds.map((id) => statuses.get(id)!.activeLeases);
}

describe("redis lease store under concurrent replicas", () => {
  const clusters: Cluster[] = [];
  before(requireRedis);
  after(async () => {
    await Promise.all(clusters.map((cluster) => cluster.close()));
  });

  test("500 concurrent acquires over 10 workers spread evenly, within capacity, and release cleanly", async () => {
    const cluster = await startReplicas("lease-concurrency");
    clusters.push(cluster);
    const { stores } = cluster;
    const workerIds = await attachWorkers(cluster, 10, 100);

    const results = await Promise.all(Array.from({ length: 500 }, (_, i) => stores[i % REPLICAS].acquire(job(i))));
    const failed = results.filter((result) => !result.ok);
    assert.deepEqual(failed, [], "every acquire is placed");

    const counts = await leaseCounts(stores[0], workerIds);
    assert.equal(
      counts.reduce((sum, n) => sum + n, 0),
      500,
    );
    assert.ok(Math.max(...counts) - Math.min(...counts) <= 1, `uneven spread: ${counts.join(",")}`);
    assert.ok(Math.max(...counts) <= 100, `over capacity: ${counts.join(",")}`);
    const placedOn = new Map(results.map((result, i) => [`job-${i}`, result.ok ? result.workerId : ""]));
    for (const i of [0, 137, 499]) {
      assert.equal((await stores[1].lease(`job-${i}`, 1))?.workerId, placedOn.get(`job-${i}`));
    }

    const released = await Promise.all(Array.from({ length: 500 }, (_, i) => stores[(i + 1) % REPLICAS].release(`job-${i}`, 1)));
    assert.ok(released.every(Boolean), "every release finds its lease");
    assert.deepEqual(await leaseCounts(stores[2], workerIds), Array(10).fill(0));

    const leaseKeys = (await keysWithPrefix(cluster.prefix)).filter((key) =>
      /^(leases|lease-expiry|worker-leases:)/.test(key.slice(cluster.prefix.length)),
    );
    assert.deepEqual(leaseKeys, [], "no lease keys remain");
  });

  test("100 concurrent acquires for 20 free slots: exactly 20 placed, 80 all busy", async () => {
    const cluster = await startReplicas("lease-contention");
    clusters.push(cluster);
    const { stores } = cluster;
    const workerIds = await attachWorkers(cluster, 10, 2);

    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => stores[i % REPLICAS].acquire(job(i))));
    const placed = results.filter((result) => result.ok);
    const busy = results.filter((result) => !result.ok && result.code === "all_busy");
    assert.equal(placed.length, 20);
    assert.equal(busy.length, 80);
    assert.deepEqual(await leaseCounts(stores[0], workerIds), Array(10).fill(2));
  });
});
