// Property test of every placement rule (DESIGN "Choosing the worker")
// against both lease stores: many random sequences (placement-sequence.ts),
// each checked step by step against the reference model.
//
// The memory store runs on a fake clock, so staleness and lease expiry are
// real steps. Redis judges time by its own clock, which a test cannot move:
// there a worker goes stale by heartbeating with a 1 ms TTL, and leases live
// long enough never to expire during a run (the contract suite covers Redis
// expiry with real sleeps). Redis sequences share one key prefix, each under
// its own id namespace, deleted at the end.
//
// Replay one sequence: MUSTER_PROPERTY_SEED=<seed> node --test <this file>.
// More or fewer sequences: MUSTER_PROPERTY_RUNS=<n> (default 200 per store).

import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { chooseWorker } from "../../src/core/choose-worker.ts";
import type { LeaseStore } from "../../src/stores/lease-store.ts";
import { createMemoryLeaseStore } from "../../src/stores/memory/memory-lease-store.ts";
import { createRedisLeaseStore } from "../../src/stores/redis/redis-lease-store.ts";
import { REDIS_URL, deleteKeysWithPrefix, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";
import { runSequence } from "./placement-sequence.ts";
import { sequenceSeed } from "./random.ts";

const RUNS = Number(process.env.MUSTER_PROPERTY_RUNS ?? 200);
const REPLAY_SEED = process.env.MUSTER_PROPERTY_SEED === undefined ? null : Number(process.env.MUSTER_PROPERTY_SEED);
const BASE_SEED = randomInt(2 ** 31);

const MEMORY_HEARTBEAT_TTL_MS = 10_000;
/** Leases of a worker that stops heartbeating expire within a few clock steps. */
const MEMORY_LEASE_TTL_MS = 25_000;
/** Long enough that no Redis heartbeat or lease runs out while a sequence runs. */
const REDIS_HEARTBEAT_TTL_MS = 120_000;
const REDIS_LEASE_TTL_MS = 600_000;
/** Redis sequences run this many at a time. */
const REDIS_LANES = 4;

function seeds(): number[] {
  if (REPLAY_SEED !== null) return [REPLAY_SEED];
  return Array.from({ length: RUNS }, (_, i) => sequenceSeed(BASE_SEED, i));
}

describe("placement properties", () => {
  test("memory lease store agrees with the reference after every step", async () => {
    for (const seed of seeds()) {
      const clock = { value: 1_700_000_000_000 };
      const store = createMemoryLeaseStore({ now: () => clock.value });
      await store.start();
      try {
        await runSequence(seed, {
          name: "memory",
          store,
          clock,
          heartbeatTtlMs: MEMORY_HEARTBEAT_TTL_MS,
          leaseTtlMs: MEMORY_LEASE_TTL_MS,
          namespace: "",
        });
      } finally {
        await store.close();
      }
    }
  });

  describe("redis", () => {
    let prefix: string;
    let store: LeaseStore;

    before(async () => {
      await requireRedis();
      prefix = uniqueKeyPrefix("placement-property");
      // Heartbeats are one step each here: no window to wait for others.
      store = createRedisLeaseStore({ url: REDIS_URL, keyPrefix: prefix, heartbeatWindowMs: 0 });
      await store.start();
    });

    after(async () => {
      await store?.close();
      if (prefix !== undefined) await deleteKeysWithPrefix(prefix);
    });

    test("redis lease store agrees with the reference after every step", async () => {
      // A few sequences at a time, to use the wait on Redis: their ids never
      // overlap, and each one's commands still reach Redis in its own order.
      const pending = seeds();
      const lane = async () => {
        for (let seed = pending.shift(); seed !== undefined; seed = pending.shift()) {
          await runSequence(seed, {
            name: "redis",
            store,
            clock: null,
            heartbeatTtlMs: REDIS_HEARTBEAT_TTL_MS,
            leaseTtlMs: REDIS_LEASE_TTL_MS,
            namespace: `q${seed}-`,
          });
        }
      };
      await Promise.all(Array.from({ length: REDIS_LANES }, lane));
    });
  });

  // The random sequences step around this instant (see reference-model.ts):
  // chooseWorker counts a heartbeat exactly heartbeatTtlMs old as fresh
  // (`now - last <= ttl`), both stores as stale (`last + ttl > now`).
  test("freshness at exactly the heartbeat TTL: the memory store and chooseWorker agree", async () => {
    const ttl = 10_000;
    const clock = { value: 1_000_000 };
    const store = createMemoryLeaseStore({ now: () => clock.value });
    await store.start();
    try {
      await store.attach({ workerId: "w", poolId: "p", capacity: 1, labels: [], acceptsWork: true }, "s", "r", ttl);
      clock.value += ttl;
      const reference = chooseWorker(
        [
          {
            workerId: "w",
            attached: true,
            lastHeartbeatMs: 1_000_000,
            acceptsWork: true,
            labels: [],
            capacity: 1,
            activeLeases: 0,
            holdsExclusive: false,
            lastLeasedSeq: 0,
            servedRuns: new Set(),
          },
        ],
        { runId: "", requiredLabels: [], exclusive: false },
        clock.value,
        ttl,
      );
      const actual = await store.acquire({
        poolId: "p",
        jobId: "j",
        attempt: 1,
        runId: "",
        requiredLabels: [],
        exclusive: false,
        leaseTtlMs: 60_000,
      });
      assert.deepEqual(actual, reference, "heartbeat exactly heartbeatTtlMs old");
    } finally {
      await store.close();
    }
  });
});
