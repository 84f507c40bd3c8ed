// S5: 20 jobs each writing 1 MB/s of 100-byte lines for --durationMs, one
// live follower each (GetJobLogs follow, in its own process), persisted.
// Measured: bytes persisted per second, line-to-follower delay (the oldest
// line of each chunk), loss (bytes sent vs received vs stored, sequence
// gaps), and how many Postgres rows the lines became.

import { startChild } from "../lib/child.ts";
import { addProcessMetrics, addServerMetrics, emptyFigure, openWindow, type Scenario } from "../lib/figure.ts";
import { connectAll, jobStates, startFleet } from "../lib/muster-fleet.ts";
import { withPg } from "../lib/stores.ts";

const SCENARIO = "s5";

export const s5: Scenario = {
  id: SCENARIO,
  title: "S5 logs: 20 jobs x 1 MB/s of 100-byte lines, one live follower each",
  sizes: {
    full: { jobs: 20, bytesPerS: 1_000_000, durationMs: 20_000, warmupMs: 3000 },
    smoke: { jobs: 2, bytesPerS: 100_000, durationMs: 1000, warmupMs: 0 },
  },
  columns: [
    { key: "offeredMbPerS", label: "MB/s offered" },
    { key: "mbPerS", label: "MB/s stored over the writing time" },
    { key: "ingestLagS", label: "ingest lag s" },
    { key: "p50Ms", label: "follower p50 ms" },
    { key: "p99Ms", label: "follower p99 ms" },
    { key: "maxMs", label: "follower max ms" },
    { key: "rowsPerLine", label: "PG rows per line" },
    { key: "serverCpuS", label: "server CPU s" },
    { key: "serverEldP99Ms", label: "server loop p99 ms" },
    { key: "serverPeakRssMB", label: "server peak RSS MB" },
    { key: "pgWriteXactsPerS", label: "PG write xacts/s" },
  ],
  targets: [
    { key: "mbPerS", op: ">=", bound: 20, label: ">= 20 MB/s (at full size)" },
    { key: "ingestLagS", op: "<=", bound: 1, label: "sustained: last finish acknowledged <= 1 s after the writing time" },
    { key: "p99Ms", op: "<=", bound: 250, label: "line-to-follower p99 <= 250 ms" },
  ],
  systems: {
    async muster(size, run) {
      const figure = emptyFigure(SCENARIO, "muster", `${size.jobs} x ${size.bytesPerS / 1e6} MB/s, ${size.durationMs / 1000} s`, run);
      const fleet = await startFleet({ agents: size.jobs, capacity: 1, mode: "logs" });
      const follower = startChild({ name: "followers", script: "bench/sim/log-follower.ts" });
      try {
        await follower.ready();
        const warm = size.warmupMs > 0;
        await connectAll(fleet, { mode: "logs", bytesPerS: size.bytesPerS, durationMs: warm ? size.warmupMs : size.durationMs });
        const [agents] = fleet.agents;
        if (warm) {
          // Warm-up phase, not measured: the same jobs and followers for
          // --warmupMs on the same server, agents and follower process, so
          // the figures are those of running processes, not of their first
          // seconds (JIT, connection set-up). A fresh server's first seconds
          // are slower; BENCHMARKS.md shows them (--warmupMs 0).
          const timeoutMs = size.warmupMs * 5 + 120_000;
          await follower.call("run", { api: fleet.server.api, poolId: fleet.poolId, jobs: size.jobs }, timeoutMs);
          await agents.call("waitFor", { finished: size.jobs, timeoutMs: 60_000 }, 70_000);
          await agents.call("configure", { durationMs: size.durationMs });
          await agents.call("resetLogCounters");
        }
        const window = await openWindow([fleet.server.child, agents, follower]);
        const t0 = Date.now();
        const followed = await follower.call<{ ids: string[]; bytes: number; lines: number; chunks: number; gaps: number; p50Ms: number; p99Ms: number; maxMs: number }>(
          "run",
          { api: fleet.server.api, poolId: fleet.poolId, jobs: size.jobs },
          size.durationMs * 5 + 120_000,
        );
        const sent = await agents.call<{ logBytesSent: number; finished: number; firstLogAt: number; lastFinishAckAt: number }>(
          "waitFor",
          { finished: size.jobs * (warm ? 2 : 1), timeoutMs: 60_000 },
          70_000,
        );
        const w = await window.close();
        figure.processes = w.processes;
        figure.servers = w.servers;
        const stored = await withPg(
          async (c) =>
            (
              await c.query(
                `select count(*)::int as rows, coalesce(sum(length(data)), 0)::bigint as bytes from "${fleet.env.schema}".log_chunks where job_id = any($1::uuid[])`,
                [followed.ids],
              )
            ).rows[0],
        );
        const storedBytes = Number(stored.bytes);
        // Sustained = everything written was stored, at the rate it was
        // written: the stored bytes over the writing time, judged together
        // with the ingest lag, the time from the first line written to the
        // last finish acknowledged (the server acknowledges a finish only once
        // the attempt's chunks are stored) beyond the writing time. A rate
        // measured over first-line-to-last-ack could never reach the offered
        // rate, however fast the ingest; an ingest that falls behind shows in
        // the lag. The wall time from the first submit is kept beside them.
        figure.metrics.wallS = (Date.now() - t0) / 1000;
        figure.metrics.mbPerS = storedBytes / 1e6 / (size.durationMs / 1000);
        figure.metrics.ingestLagS = (sent.lastFinishAckAt - sent.firstLogAt - size.durationMs) / 1000;
        figure.metrics.offeredMbPerS = (size.jobs * size.bytesPerS) / 1e6;
        figure.metrics.p50Ms = followed.p50Ms;
        figure.metrics.p99Ms = followed.p99Ms;
        figure.metrics.maxMs = followed.maxMs;
        figure.metrics.rowsPerLine = stored.rows / Math.max(1, followed.lines);
        figure.lost = (sent.logBytesSent - storedBytes > 0 ? 1 : 0) + (sent.logBytesSent - followed.bytes > 0 ? 1 : 0) + followed.gaps;
        if (figure.lost) figure.notes.push(`bytes sent ${sent.logBytesSent}, stored ${storedBytes}, followed ${followed.bytes}, gaps ${followed.gaps}`);
        const states = await jobStates(fleet.env.schema);
        if ((states.succeeded ?? 0) !== size.jobs * (warm ? 2 : 1)) figure.errors.push(`job states: ${JSON.stringify(states)}`);
        addProcessMetrics(figure, { "muster-server": "server", followers: "followers" });
        addServerMetrics(figure);
      } finally {
        await follower.kill("SIGKILL");
        await fleet.close();
      }
      return [figure];
    },
  },
};
