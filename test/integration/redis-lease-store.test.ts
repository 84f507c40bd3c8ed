// The lease-store contract against the real Redis at 127.0.0.1:6379, each
// test under its own key prefix, deleted afterwards.

import { before } from "node:test";
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
