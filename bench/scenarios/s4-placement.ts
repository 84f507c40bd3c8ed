// S4: placement decisions straight on the Redis lease store, from one
// process: 1,000 workers in one pool at 1,000 / 10,000 / 100,000 active
// leases, and 100 pools x 10 workers at 10,000 leases. The cost per decision
// should not grow with the number of leases (acquire walks only the head of
// the pool's selection set). It runs on a private redis-server (same version
// and settings as the shared one), so neither Redis CPU per decision nor the
// rate is other engineers' traffic; --sharedRedis 1 runs it on the shared one.
//
// Each case runs twice: one decision per call (acquire), and pages of
// --page decisions per call (acquireMany), which is how the server's placer
// decides: one call per page of a pool's queue. The targets are judged on
// the paged cases; p50/p99 are per call.

import { startChild } from "../lib/child.ts";
import { addProcessMetrics, addServerMetrics, emptyFigure, openWindow, type Figure, type Scenario } from "../lib/figure.ts";
import { startPrivateRedis } from "../lib/private-redis.ts";
import { deleteKeys, REDIS_URL, redisPrefix, runId } from "../lib/stores.ts";

const SCENARIO = "s4";

async function placement(
  variant: string,
  pools: number,
  workersPerPool: number,
  leases: number,
  page: number,
  size: Record<string, number>,
  run: number,
): Promise<Figure> {
  const figure = emptyFigure(SCENARIO, "muster", variant, run);
  const prefix = redisPrefix("s4", runId());
  const redis = size.sharedRedis === 1 ? null : await startPrivateRedis();
  const driver = startChild({ name: "driver", script: "bench/sim/lease-driver.ts" });
  try {
    await driver.ready();
    const capacity = Math.ceil((leases + size.decisions) / (pools * workersPerPool)) + 10;
    await driver.call("setup", { url: redis?.url ?? REDIS_URL, prefix, pools, workersPerPool, capacity });
    await driver.call("preload", { leases, inFlight: size.inFlight }, 600_000);
    const window = await openWindow([driver]);
    const before = await redis?.commands();
    const result = await driver.call<{ decisionsPerS: number; p50Ms: number; p99Ms: number }>(
"decide",
      { decisions: size.decisions, inFlight: page > 1 ? size.pageInFlight : size.inFlight, page },
      600_000,
    );
    const after = await redis?.commands();
    const w = await window.close();
    if (before && after) {
      figure.metrics.redisCmdsPerDecision = (after.total - before.total - 3) / size.decisions;
      figure.metrics.usPerDecisionRedisCpu = ((after.cpuS - before.cpuS) * 1e6) / size.decisions;
    }
    figure.processes = w.processes;
    figure.servers = w.servers;
    Object.assign(figure.metrics, result);
    figure.metrics.usPerDecisionRedisCpu ??= (w.servers.redisCpuShare * w.seconds * 1e6) / size.decisions;
    addProcessMetrics(figure, { driver: "driver" });
    addServerMetrics(figure);
    await driver.call("close");
  } finally {
    await driver.kill("SIGKILL");
    if (redis) await redis.stop();
    else await deleteKeys(prefix);
  }
  return figure;
}

export const s4: Scenario = {
  id: SCENARIO,
  title: "S4 placement decisions on the Redis lease store, one process",
  sizes: {
    full: { workers: 1000, leases1: 1000, leases2: 10_000, leases3: 100_000, pools: 100, workersPerPool: 10, decisions: 20_000, inFlight: 64, page: 64, pageInFlight: 4 },
    smoke: { workers: 20, leases1: 100, leases2: 1000, leases3: 0, pools: 5, workersPerPool: 4, decisions: 500, inFlight: 16, page: 16, pageInFlight: 2 },
  },
  columns: [
    { key: "decisionsPerS", label: "decisions/s" },
    { key: "p50Ms", label: "p50 ms" },
    { key: "p99Ms", label: "p99 ms" },
    { key: "usPerDecisionRedisCpu", label: "Redis CPU us/decision" },
    { key: "redisCmdsPerDecision", label: "Redis cmds/decision (in script)" },
    { key: "driverCpuS", label: "driver CPU s" },
    { key: "redisCmdPerS", label: "Redis cmd/s" },
  ],
  targets: [
    { variant: "1 pool x 1000, 10000 leases, pages of 64", key: "decisionsPerS", op: ">=", bound: 20_000, label: ">= 20,000 decisions/s" },
    { variant: "100 pools x 10, 10000 leases, pages of 64", key: "decisionsPerS", op: ">=", bound: 20_000, label: ">= 20,000 decisions/s" },
  ],
  systems: {
    async muster(size, run) {
      const figures: Figure[] = [];
      for (const page of [1, size.page]) {
        const paged = page > 1 ? `, pages of ${page}` : "";
        for (const leases of [size.leases1, size.leases2, size.leases3].filter((n) => n > 0)) {
          figures.push(await placement(`1 pool x ${size.workers}, ${leases} leases${paged}`, 1, size.workers, leases, page, size, run));
        }
        const variant = `${size.pools} pools x ${size.workersPerPool}, ${size.leases2} leases${paged}`;
        figures.push(await placement(variant, size.pools, size.workersPerPool, size.leases2, page, size, run));
      }
      return figures;
    },
  },
};
