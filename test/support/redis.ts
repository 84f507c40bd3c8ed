// Test support for the real Redis at 127.0.0.1:6379 shared by every test run:
// each test gets its own key prefix and deletes its keys afterwards (never
// FLUSHALL/FLUSHDB: other suites use the same server).

import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";

export const REDIS_URL = "redis://127.0.0.1:6379";

const START_HINT =
  'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no ' +
  "--dir /var/lib/redis --logfile /var/log/redis/ci.log";

/** A connection that fails fast instead of retrying, for set-up and teardown. */
function oneShotConnection(): Redis {
  return new Redis(REDIS_URL, {
    lazyConnect: true,
    connectTimeout: 2000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
}

/** Fails with instructions when Redis is not running; call it in `before`. */
export async function requireRedis(): Promise<void> {
  const redis = oneShotConnection();
  redis.on("error", () => {});
  try {
    await redis.connect();
    await redis.ping();
  } catch (error) {
    throw new Error(`Redis not reachable at 127.0.0.1:6379 — start it with: ${START_HINT}`, { cause: error });
  } finally {
    redis.disconnect();
  }
}

/** A prefix no other test uses, e.g. "muster-test:lease-store:1f2e3d4c:". */
export function uniqueKeyPrefix(label: string): string {
  return `muster-test:${label}:${randomUUID().slice(0, 8)}:`;
}

/** The keys under a prefix (SCAN, never KEYS). */
export async function keysWithPrefix(prefix: string): Promise<string[]> {
  const redis = oneShotConnection();
  try {
    await redis.connect();
    const found: string[] = [];
    let cursor = "0";
    do {
      const [next, batch] = await redis.scan(cursor, "MATCH", `${globEscape(prefix)}*`, "COUNT", 1000);
      cursor = next;
      found.push(...batch.filter((key) => key.startsWith(prefix)));
    } while (cursor !== "0");
    return found;
  } finally {
    redis.disconnect();
  }
}

/** Deletes every key under the prefix. */
export async function deleteKeysWithPrefix(prefix: string): Promise<void> {
  const keys = await keysWithPrefix(prefix);
  if (keys.length === 0) return;
  const redis = oneShotConnection();
  try {
    await redis.connect();
    for (let i = 0; i < keys.length; i += 500) await redis.unlink(...keys.slice(i, i + 500));
  } finally {
    redis.disconnect();
  }
}

function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}
