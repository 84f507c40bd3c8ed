// The config cache against a Database stand-in that counts its reads, on a
// clock the test moves.

import assert from "node:assert/strict";
import { test } from "node:test";
import type { WorkerPoolRecord } from "../domain.ts";
import type { Database } from "../stores/database.ts";
import { CACHE_TTL_MS, WORKER_NAME_TTL_MS, createConfigCache } from "./config-cache.ts";

function fakeDb() {
  const names = new Map<string, string>();
  const pools = new Map<string, WorkerPoolRecord>();
  const reads = { workers: 0, pools: 0 };
  const db = {
    workers: {
      async get(id: string) {
        reads.workers++;
        const name = names.get(id);
        return name === undefined ? null : { id, name };
      },
    },
    pools: {
      async get(id: string) {
        reads.pools++;
        return pools.get(id) ?? null;
      },
    },
  } as unknown as Database;
  return { db, names, pools, reads };
}

test("a worker's name, once found, is read again only after WORKER_NAME_TTL_MS", async () => {
  const { db, names, reads } = fakeDb();
  let clock = 1_000_000;
  const cache = createConfigCache(db, () => clock);
  names.set("w1", "builder-1");
  assert.equal(await cache.workerName("w1"), "builder-1");
  clock += CACHE_TTL_MS * 30;
  assert.equal(await cache.workerName("w1"), "builder-1");
  assert.equal(reads.workers, 1, "names never change: no second read within the long lifetime");
  clock += WORKER_NAME_TTL_MS;
  assert.equal(await cache.workerName("w1"), "builder-1");
  assert.equal(reads.workers, 2);
});

test("a worker not found is asked for again after CACHE_TTL_MS, and found then", async () => {
  const { db, names, reads } = fakeDb();
  let clock = 1_000_000;
  const cache = createConfigCache(db, () => clock);
  assert.equal(await cache.workerName("w2"), null);
  names.set("w2", "late-registered");
  assert.equal(await cache.workerName("w2"), null, "within the short lifetime the miss is cached");
  clock += CACHE_TTL_MS + 1;
  assert.equal(await cache.workerName("w2"), "late-registered");
  assert.equal(reads.workers, 2);
});

test("pools stay cached for CACHE_TTL_MS only, and invalidate() forgets names too", async () => {
  const { db, names, pools, reads } = fakeDb();
  let clock = 1_000_000;
  const cache = createConfigCache(db, () => clock);
  pools.set("p1", { id: "p1", name: "deploy" } as WorkerPoolRecord);
  assert.equal((await cache.pool("p1"))?.name, "deploy");
  pools.set("p1", { id: "p1", name: "renamed" } as WorkerPoolRecord);
  clock += CACHE_TTL_MS + 1;
  assert.equal((await cache.pool("p1"))?.name, "renamed");
  assert.equal(reads.pools, 2);

  names.set("w3", "one");
  await cache.workerName("w3");
  cache.invalidate();
  await cache.workerName("w3");
  assert.equal(reads.workers, 2);
});

test("more live names than the cache holds: the oldest are dropped, the newest still answer from memory", async () => {
  const { db, names, reads } = fakeDb();
  const clock = 1_000_000;
  const cache = createConfigCache(db, () => clock);
  for (let n = 0; n < 10_050; n++) {
    names.set(`w${n}`, `worker-${n}`);
    await cache.workerName(`w${n}`);
  }
  assert.equal(reads.workers, 10_050);
  assert.equal(await cache.workerName("w10049"), "worker-10049");
  assert.equal(reads.workers, 10_050, "the newest name is still cached");
  assert.equal(await cache.workerName("w0"), "worker-0");
  assert.equal(reads.workers, 10_051, "the oldest was dropped and read again");
});
