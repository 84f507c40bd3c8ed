// S2: drain N no-op jobs over 50 workers x 4 slots, durable, producer and
// workers running together: wall time from the first submit to the last
// completion. The same shape for every system: one producer process adding
// jobs one call at a time with the same number in flight, one worker process
// holding all 200 slots.

import { addProcessMetrics, addServerMetrics, emptyFigure, openWindow, type Scenario } from "../lib/figure.ts";
import { connectAll, jobStates, startFleet } from "../lib/muster-fleet.ts";
import { runPeer } from "../peers/peer-run.ts";

const SCENARIO = "s2";

export const s2: Scenario = {
  id: SCENARIO,
  title: "S2 drain: N no-op jobs over 50 workers x 4 slots (producer + workers together)",
  sizes: {
    full: { jobs: 10_000, workers: 50, slots: 4, inFlight: 64 },
    smoke: { jobs: 200, workers: 5, slots: 4, inFlight: 16 },
  },
  columns: [
    { key: "jobsPerS", label: "jobs/s" },
    { key: "submitPerS", label: "submits/s" },
    { key: "serverCpuS", label: "server CPU s" },
    { key: "serverCpuSystemS", label: "of which kernel s" },
    { key: "serverPeakRssMB", label: "server peak RSS MB" },
    { key: "serverEldP99Ms", label: "server loop p99 ms" },
    { key: "workersCpuS", label: "workers CPU s" },
    { key: "producerCpuS", label: "producer CPU s" },
    { key: "redisCmdPerS", label: "Redis cmd/s" },
    { key: "redisCpuShare", label: "Redis CPU (cores)" },
    { key: "pgWriteXactsPerS", label: "PG write xacts/s" },
    { key: "pgCommitsPerS", label: "PG commits/s" },
    { key: "pgCpuShare", label: "PG CPU (cores)" },
  ],
  targets: [{ key: "jobsPerS", op: ">=", bound: 2500, label: ">= 2,500 jobs/s" }],
  systems: {
    async muster(size, run) {
      const figure = emptyFigure(SCENARIO, "muster", "", run);
      const fleet = await startFleet({ agents: size.workers, capacity: size.slots, mode: "finish" });
      try {
        await connectAll(fleet, { mode: "finish" });
        const [agents] = fleet.agents;
        const window = await openWindow([fleet.server.child, agents, fleet.producer]);
        const produced = fleet.producer.call<{ startedAt: number; endedAt: number; submitted: unknown[]; errors: number; firstError: string }>(
          "closed",
          { api: fleet.server.api, poolId: fleet.poolId, count: size.jobs, concurrency: size.inFlight, namePrefix: "j" },
          600_000,
        );
        const done = agents.call<{ at: number; duplicates: number; finished: number }>("waitFor", { finished: size.jobs, timeoutMs: 600_000 }, 610_000);
        const [p, d] = await Promise.all([produced, done]);
        const w = await window.close();
        figure.processes = w.processes;
        figure.servers = w.servers;
        const seconds = (d.at - p.startedAt) / 1000;
        figure.metrics.jobsPerS = size.jobs / seconds;
        figure.metrics.submitPerS = size.jobs / ((p.endedAt - p.startedAt) / 1000);
        if (p.errors > 0) figure.errors.push(`${p.errors} submits failed: ${p.firstError}`);
        const states = await jobStates(fleet.env.schema);
        figure.lost = size.jobs - (states.succeeded ?? 0);
        figure.duplicated = d.duplicates;
        if (figure.lost !== 0) figure.notes.push(`job states: ${JSON.stringify(states)}`);
      } finally {
        await fleet.close();
      }
      addProcessMetrics(figure, { "muster-server": "server", agents: "workers", producer: "producer" });
      addServerMetrics(figure);
      return [figure];
    },
    bullmq: (size, run) => runPeer(SCENARIO, "bullmq", size, run),
    "graphile-worker": (size, run) => runPeer(SCENARIO, "graphile-worker", size, run),
    "pg-boss": (size, run) => runPeer(SCENARIO, "pg-boss", size, run),
  },
};

