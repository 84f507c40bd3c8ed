// Drives Muster's Redis lease store directly (src/stores/redis), the way the
// placer calls it, with no server around it: attach the workers, preload a
// number of active leases, then time a burst of placement decisions with a
// bounded number of calls in flight, spread over the pools: one decision per
// call (acquire), or a page of decisions per call (acquireMany), which is how
// the placer decides a page of a pool's queue.

import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { createRedisLeaseStore } from "../../src/stores/redis/redis-lease-store.ts";
import type { LeaseStore } from "../../src/stores/lease-store.ts";
import { serveCommands } from "../lib/ipc-child.ts";
import { percentile } from "../lib/stats.ts";

const HOUR_MS = 3_600_000;
let store: LeaseStore | null = null;
let pools: string[] = [];

async function bounded(count: number, inFlight: number, op: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(inFlight, count) }, async () => {
      while (next < count) await op(next++);
    }),
  );
}

async function acquire(i: number, latencies?: number[]): Promise<void> {
  const poolId = pools[i % pools.length];
  const t = performance.now();
  const result = await store!.acquire({ poolId, jobId: randomUUID(), attempt: 1, runId: "", requiredLabels: [], exclusive: false, leaseTtlMs: HOUR_MS });
  latencies?.push(performance.now() - t);
  if (!result.ok) throw new Error(`acquire in pool ${poolId} found no worker: ${result.code}`);
}

async function acquirePage(i: number, page: number, latencies: number[]): Promise<void> {
  const poolId = pools[i % pools.length];
  const requests = Array.from({ length: page }, () => ({
    poolId,
    jobId: randomUUID(),
    attempt: 1,
    runId: "",
    requiredLabels: [],
    exclusive: false,
    leaseTtlMs: HOUR_MS,
  }));
  const t = performance.now();
  const results = await store!.acquireMany(requests);
  latencies.push(performance.now() - t);
  const missed = results.find((result) => result === "held" || !result.ok);
  if (results.length !== page || missed !== undefined) {
    throw new Error(`acquireMany in pool ${poolId} placed ${results.length} of ${page}: ${JSON.stringify(missed)}`);
  }
}

serveCommands({
  async setup(args: { url: string; prefix: string; pools: number; workersPerPool: number; capacity: number }) {
    store = createRedisLeaseStore({ url: args.url, keyPrefix: args.prefix });
    await store.start();
    pools = Array.from({ length: args.pools }, () => randomUUID());
    const workers = pools.flatMap((poolId) => Array.from({ length: args.workersPerPool }, () => ({ poolId, workerId: randomUUID() })));
    await bounded(workers.length, 64, async (i) => {
      const w = workers[i];
      await store!.attach({ workerId: w.workerId, poolId: w.poolId, capacity: args.capacity, labels: [], acceptsWork: true }, randomUUID(), "bench", HOUR_MS);
    });
    return workers.length;
  },
  async preload(args: { leases: number; inFlight: number }) {
    const t = performance.now();
    await bounded(args.leases, args.inFlight, (i) => acquire(i));
    return (performance.now() - t) / 1000;
  },
  async decide(args: { decisions: number; inFlight: number; page: number }) {
    const latencies: number[] = [];
    const t = performance.now();
    if (args.page > 1) {
      await bounded(Math.ceil(args.decisions / args.page), args.inFlight, (i) => acquirePage(i, args.page, latencies));
    } else {
      await bounded(args.decisions, args.inFlight, (i) => acquire(i, latencies));
    }
    const seconds = (performance.now() - t) / 1000;
    latencies.sort((a, b) => a - b);
    return { decisionsPerS: args.decisions / seconds, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99) };
  },
  async close() {
    await store?.close();
    store = null;
  },
});
