// S3: open loop at fixed rates (100, 500, 2,000 jobs/s by default), 50
// workers x 4 slots: submit-to-start latency, the producer's submit stamp
// against the worker's arrival stamp (same machine clock). A rate the system
// cannot keep up with is reported with what arrived by the deadline, and the
// higher rates are skipped (their queue would only be the backlog's).
//
// Each system first runs --warmupMs at --warmupRate on the same processes,
// not measured, so the rates are measured on running processes rather than
// in their first second (JIT, first connections): a fresh server's first
// jobs are slower, which --warmupMs 0 shows.

import { latencyMetrics } from "../lib/latency.ts";
import { addProcessMetrics, addServerMetrics, emptyFigure, openWindow, type Figure, type Scenario } from "../lib/figure.ts";
import { connectAll, jobStates, startFleet } from "../lib/muster-fleet.ts";
import { runPeer } from "../peers/peer-run.ts";

const SCENARIO = "s3";
/** After the producer stops, how long the last jobs get to start before a rate counts as not sustained. */
const CATCH_UP_MS = 15_000;

export const s3: Scenario = {
  id: SCENARIO,
  title: "S3 open loop: submit-to-start latency at fixed rates, 50 workers x 4 slots",
  sizes: {
    full: { rate1: 100, rate2: 500, rate3: 2000, durationMs: 5000, workers: 50, slots: 4, warmupRate: 200, warmupMs: 2000 },
    smoke: { rate1: 50, rate2: 100, rate3: 0, durationMs: 1000, workers: 5, slots: 4, warmupRate: 0, warmupMs: 0 },
  },
  columns: [
    { key: "jobs", label: "jobs" },
    { key: "p50Ms", label: "p50 ms" },
    { key: "p99Ms", label: "p99 ms" },
    { key: "maxMs", label: "max ms" },
    { key: "producerMaxLagMs", label: "producer lag ms" },
    { key: "serverCpuS", label: "server CPU s" },
    { key: "serverEldP99Ms", label: "server loop p99 ms" },
    { key: "workersCpuS", label: "workers CPU s" },
    { key: "redisCmdPerS", label: "Redis cmd/s" },
    { key: "pgWriteXactsPerS", label: "PG write xacts/s" },
    { key: "pgCommitsPerS", label: "PG commits/s" },
    { key: "pgCpuShare", label: "PG CPU (cores)" },
  ],
  targets: [
    { variant: "500/s", key: "p50Ms", op: "<=", bound: 2, label: "p50 <= 2 ms" },
    { variant: "500/s", key: "p99Ms", op: "<=", bound: 10, label: "p99 <= 10 ms" },
    { variant: "2000/s", key: "p99Ms", op: "<=", bound: 25, label: "p99 <= 25 ms" },
  ],
  systems: {
    async muster(size, run) {
      const figures: Figure[] = [];
      const rates = [size.rate1, size.rate2, size.rate3].filter((r) => r > 0);
      let warmed = 0;
      const fleet = await startFleet({ agents: size.workers, capacity: size.slots, mode: "finish" });
      try {
        await connectAll(fleet, { mode: "finish" });
        const [agents] = fleet.agents;
        let expected = 0;
        if (size.warmupMs > 0 && size.warmupRate > 0) {
          // Warm-up phase, not measured (see the top of this file).
          const w = await fleet.producer.call<{ submitted: unknown[]; errors: number }>(
            "open",
            { api: fleet.server.api, poolId: fleet.poolId, rate: size.warmupRate, durationMs: size.warmupMs, namePrefix: "warm" },
            size.warmupMs * 4 + 120_000,
          );
          expected += w.submitted.length;
          warmed = w.submitted.length - w.errors;
          await agents.call("waitFor", { finished: expected, timeoutMs: CATCH_UP_MS }, CATCH_UP_MS + 5000);
        }
        for (const rate of rates) {
          const figure = emptyFigure(SCENARIO, "muster", `${rate}/s`, run);
          figures.push(figure);
          const window = await openWindow([fleet.server.child, agents, fleet.producer]);
          const p = await fleet.producer.call<{ submitted: Array<[string, number]>; errors: number; firstError: string; overloaded: boolean; maxLagMs: number }>(
            "open",
            { api: fleet.server.api, poolId: fleet.poolId, rate, durationMs: size.durationMs, namePrefix: `r${rate}` },
            size.durationMs * 4 + 120_000,
          );
          expected += p.submitted.length;
          let sustained = true;
          await agents.call("waitFor", { finished: expected, timeoutMs: CATCH_UP_MS }, CATCH_UP_MS + 5000).catch(() => {
            sustained = false;
          });
          const w = await window.close();
          figure.processes = w.processes;
          figure.servers = w.servers;
          const arrivals = await agents.call<Array<[string, number]>>("arrivals");
          Object.assign(figure.metrics, latencyMetrics(p.submitted, arrivals));
          figure.metrics.producerMaxLagMs = p.maxLagMs;
          if (p.errors > 0) figure.errors.push(`${p.errors} submits failed: ${p.firstError}`);
          figure.metrics.submitErrors = p.errors;
          if (p.overloaded) figure.notes.push("producer overloaded: too many submits in flight");
          addProcessMetrics(figure, { "muster-server": "server", agents: "workers", producer: "producer" });
          addServerMetrics(figure);
          if (!sustained) {
            figure.notes.push(`not sustained: ${figure.metrics.missing} of ${p.submitted.length} jobs had not started ${CATCH_UP_MS / 1000} s after the last submit; higher rates skipped`);
            break;
          }
        }
        const stats = await agents.call<{ duplicates: number }>("stats");
        const states = await jobStates(fleet.env.schema);
        const last = figures[figures.length - 1];
        last.duplicated = stats.duplicates;
        const accepted = warmed + figures.reduce((a, f) => a + f.metrics.jobs, 0) - figures.reduce((a, f) => a + (f.metrics.submitErrors ?? 0), 0);
        const unfinished = accepted - (states.succeeded ?? 0);
        // Jobs still queued behind an overload are late, not lost: they are in Postgres.
        const queued = (states.queued ?? 0) + (states.assigned ?? 0) + (states.running ?? 0);
        last.lost = unfinished - queued;
      } finally {
        await fleet.close();
      }
      return figures;
    },
    bullmq: (size, run) => runPeer(SCENARIO, "bullmq", size, run),
    "graphile-worker": (size, run) => runPeer(SCENARIO, "graphile-worker", size, run),
    "pg-boss": (size, run) => runPeer(SCENARIO, "pg-boss", size, run),
  },
};
