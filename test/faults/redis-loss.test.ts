// Fault scenarios: Redis loses its data, by FLUSHALL and by a restart without
// persistence, while jobs run. The server must notice, pause placement, be
// not-ready meanwhile, rebuild Redis from Postgres, and never run a job again
// because Redis forgot it. Both run against a private redis-server on a free
// port: the shared Redis on 6379 is never flushed.

import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { countedLines, countingScript, createFaultEnv, JobState, type FaultEnv } from "./harness/fault-env.ts";
import { startPrivateRedis, type PrivateRedis } from "./harness/private-redis.ts";

let redis: PrivateRedis;
let env: FaultEnv | undefined;
before(async () => {
  redis = await startPrivateRedis();
});
afterEach(async () => {
  await env?.close();
  env = undefined;
});
after(async () => {
  await redis?.stop();
});

/** Polls /readyz until stopped; records every status seen. */
function watchReadiness(api: string): { seen: Set<number>; stop(): Promise<void> } {
  const seen = new Set<number>();
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        const response = await fetch(`http://${api}/readyz`, { signal: AbortSignal.timeout(1000) });
        seen.add(response.status);
        await response.arrayBuffer();
      } catch {
        seen.add(0);
      }
      await sleep(25);
    }
  })();
  return {
    seen,
    async stop() {
      running = false;
      await loop;
    },
  };
}

async function scenario(label: string, downMs: number, lose: (redis: PrivateRedis) => Promise<void>): Promise<void> {
  env = await createFaultEnv({ label, redisUrl: redis.url });
  const { poolId, token } = await env.createPool(label.replace(/_/g, "-"));
  const a = await env.startAgent("a", token);
  const b = await env.startAgent("b", token);
  await env.waitHealthy(poolId, ["a", "b"]);
  const jobs = await Promise.all([1, 2].map(() => env!.submit(poolId, countingScript(40, 75), { maxAttempts: 3 })));
  for (const job of jobs) await env.waitUntilLogged(job.id, 1, 2);

  const readiness = watchReadiness(env.server.api);
  try {
    await lose(redis);
    await recovers(env, poolId, jobs, readiness, downMs);
  } finally {
    await readiness.stop();
  }
  await Promise.all([a.proc.stop("SIGTERM"), b.proc.stop("SIGTERM")]);
}

async function recovers(env: FaultEnv, poolId: string, jobs: { id: string }[], readiness: ReturnType<typeof watchReadiness>, downMs: number): Promise<void> {

  for (const job of jobs) {
    const ended = await env.waitEnded(job.id, 25_000);
    assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
    assert.equal(ended.attempt, 1, "not run again because Redis forgot it");
    assert.deepEqual(countedLines((await env.readLog(job.id, 1)).data.toString()), Array.from({ length: 40 }, (_, i) => i + 1));
  }
  // Placement works again after the rebuild.
  await env.waitHealthy(poolId, ["a", "b"], 15_000);
  const later = await env.submit(poolId, "echo after");
  const laterEnded = await env.waitEnded(later.id);
  assert.equal(laterEnded.state, JobState.SUCCEEDED, laterEnded.message);
  assert.ok(readiness.seen.has(200), "ready again after the rebuild");
  const lost = await env.server.waitFor((line) => line.event === "lease_store_lost", 1000);
  assert.ok(lost, "the loss was detected");
  const rebuilt = await env.server.waitFor((line) => line.event === "lease_store_rebuilt", 1000);
  // A rebuild quicker than the readiness poll cannot be seen from outside; a longer one must show.
  if (Number(rebuilt.ms) >= 150 || downMs > 0) {
    assert.ok([...readiness.seen].some((s) => s !== 200), `not ready while Redis was being rebuilt (saw ${[...readiness.seen].join(", ")})`);
  }
  await env.assertInvariants();
}

test("Redis FLUSHALL while jobs run: detected, rebuilt from Postgres, nothing re-run", { timeout: 90_000 }, async () => {
  await scenario("redis_flush", 0, (r) => r.flushAll());
});

test("Redis restart (no persistence) while jobs run: detected, rebuilt from Postgres, nothing re-run", { timeout: 90_000 }, async () => {
  await scenario("redis_restart", 1000, (r) => r.restart(1000));
});
