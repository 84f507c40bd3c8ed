// The lease-store contract against the real Redis at 127.0.0.1:6379, each
// test under its own key prefix, deleted afterwards.

import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createRedisLeaseStore } from "../../src/stores/redis/redis-lease-store.ts";
import { leaseStoreContract } from "../contract/lease-store.contract.ts";
import { REDIS_URL, deleteKeysWithPrefix, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";

before(requireRedis);

leaseStoreContract("redis", async () => {
  const keyPrefix = uniqueKeyPrefix("lease-store");
  const store = createRedisLeaseStore({ url: REDIS_URL, keyPrefix });
  await store.start();
  return {
    store,
    cleanup: async () => {
      await store.close();
      await deleteKeysWithPrefix(keyPrefix);
    },
  };
});

// Byte fan-out between replicas: two stores on one prefix, as two server replicas.
describe("redis byte fan-out across replicas", () => {
  const open = async (keyPrefix: string) => {
    const store = createRedisLeaseStore({ url: REDIS_URL, keyPrefix });
    await store.start();
    return store;
  };
  const until = async (what: string, ok: () => boolean) => {
    const deadline = Date.now() + 5000;
    while (!ok()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(5);
    }
  };

  test("every byte subscriber on either replica gets each payload once, the publisher's own included", async () => {
    const keyPrefix = uniqueKeyPrefix("byte-fanout");
    const [a, b] = [await open(keyPrefix), await open(keyPrefix)];
    try {
      const got = { a: [] as string[], b: [] as string[] };
      await a.subscribeBytes("logs:j", (p) => got.a.push(Buffer.from(p).toString()));
      await b.subscribeBytes("logs:j", (p) => got.b.push(Buffer.from(p).toString()));
      for (const n of [1, 2, 3]) await a.publishBytes("logs:j", Buffer.from(`a${n}`));
      for (const n of [1, 2]) await b.publishBytes("logs:j", Buffer.from(`b${n}`));
      await until("five payloads on each replica", () => got.a.length >= 5 && got.b.length >= 5);
      await sleep(50);
      for (const seen of [got.a, got.b]) {
        assert.deepEqual(seen.filter((m) => m.startsWith("a")), ["a1", "a2", "a3"]);
        assert.deepEqual(seen.filter((m) => m.startsWith("b")), ["b1", "b2"]);
        assert.equal(seen.length, 5, `no payload twice: ${seen.join(",")}`);
      }
    } finally {
      await a.close();
      await b.close();
      await deleteKeysWithPrefix(keyPrefix);
    }
  });

  test("a replica that subscribes while another publishes gets every payload published after its subscription", async () => {
    const keyPrefix = uniqueKeyPrefix("byte-fanout");
    const [a, b] = [await open(keyPrefix), await open(keyPrefix)];
    try {
      const received: number[] = [];
      let firstAfterSubscribe = Number.POSITIVE_INFINITY;
      let next = 1;
      const publishing = (async () => {
        for (; next <= 300; next++) {
          await a.publishBytes("logs:k", Buffer.from(String(next)));
          if (next % 10 === 0) await sleep(1);
        }
      })();
      await sleep(30);
      await b.subscribeBytes("logs:k", (p) => received.push(Number(Buffer.from(p).toString())));
      firstAfterSubscribe = next + 1; // the publish in progress may have counted subscribers before
      await publishing;
      assert.ok(firstAfterSubscribe < 300, "the subscription came while publishing went on");
      await until("the last payload on B", () => received.at(-1) === 300);
      const expected = Array.from({ length: 300 - firstAfterSubscribe + 1 }, (_, i) => firstAfterSubscribe + i);
      assert.deepEqual(received.filter((n) => n >= firstAfterSubscribe), expected);
    } finally {
      await a.close();
      await b.close();
      await deleteKeysWithPrefix(keyPrefix);
    }
  });
});
