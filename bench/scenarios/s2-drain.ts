// S2: drain N no-op jobs over 50 workers x 4 slots, durable, in two cases,
// each on a fresh schema or prefix, with the same shape for every system:
//
//   backlog        the producer adds all N jobs while no worker runs (Muster's
//                  wait for a healthy worker, queue_timeout); then the workers
//                  start. Jobs/s from the workers' start to the last completion.
//   with producer  the workers run while the producer adds the jobs. Jobs/s
//                  from the first add to the last completion.
//
// One producer process adds jobs one call at a time with the same number in
// flight; one worker process holds all 200 slots. The target is checked on
// each case.

import { addProcessMetrics, addServerMetrics, emptyFigure, openWindow, type Figure, type Scenario } from "../lib/figure.ts";
import { connectAll, jobStates, startFleet, type Fleet } from "../lib/muster-fleet.ts";
import { BACKLOG, runPeer, WITH_PRODUCER } from "../peers/peer-run.ts";

const SCENARIO = "s2";

export const s2: Scenario = {
  id: SCENARIO,
  title: "S2 drain: N no-op jobs over 50 workers x 4 slots (from a backlog; with the producer running)",
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
  targets: [
    { variant: BACKLOG, key: "jobsPerS", op: ">=", bound: 2500, label: ">= 2,500 jobs/s" },
    { variant: WITH_PRODUCER, key: "jobsPerS", op: ">=", bound: 2500, label: ">= 2,500 jobs/s" },
  ],
  systems: {
    async muster(size, run) {
      return [await musterBacklog(size, run), await musterWithProducer(size, run)];
    },
    bullmq: (size, run) => runPeer(SCENARIO, "bullmq", size, run),
    "graphile-worker": (size, run) => runPeer(SCENARIO, "graphile-worker", size, run),
    "pg-boss": (size, run) => runPeer(SCENARIO, "pg-boss", size, run),
  },
};


type Size = Record<string, number>;

/** One Muster run of a case on a fresh fleet: `measure` fills in jobs/s and submits/s and returns the agents' duplicate count. */
async function musterCase(size: Size, run: number, variant: string, measure: (fleet: Fleet, figure: Figure) => Promise<number>): Promise<Figure> {
  const figure = emptyFigure(SCENARIO, "muster", variant, run);
  const fleet = await startFleet({ agents: size.workers, capacity: size.slots, mode: "finish" });
  try {
    figure.duplicated = await measure(fleet, figure);
    const states = await jobStates(fleet.env.schema);
    figure.lost = size.jobs - (states.succeeded ?? 0);
    if (figure.lost !== 0) figure.notes.push(`job states: ${JSON.stringify(states)}`);
  } finally {
    await fleet.close();
  }
  addProcessMetrics(figure, { "muster-server": "server", agents: "workers", producer: "producer" });
  addServerMetrics(figure);
  return figure;
}

type Produced = { startedAt: number; endedAt: number; errors: number; firstError: string };

function submit(fleet: Fleet, size: Size, queueTimeoutMs?: number): Promise<Produced> {
  return fleet.producer.call<Produced>(
    "closed",
    { api: fleet.server.api, poolId: fleet.poolId, count: size.jobs, concurrency: size.inFlight, namePrefix: "j", queueTimeoutMs },
    600_000,
  );
}

function musterBacklog(size: Size, run: number): Promise<Figure> {
  return musterCase(size, run, BACKLOG, async (fleet, figure) => {
    const [agents] = fleet.agents;
    // The agents are registered but not connected: the pool has no healthy
    // worker, and every job waits for one.
    const p = await submit(fleet, size, 3_600_000);
    if (p.errors > 0) figure.errors.push(`${p.errors} submits failed: ${p.firstError}`);
    figure.metrics.submitPerS = size.jobs / ((p.endedAt - p.startedAt) / 1000);
    const window = await openWindow([fleet.server.child, agents, fleet.producer]);
    const connected = connectAll(fleet, { mode: "finish" });
    const d = await agents.call<{ at: number; duplicates: number }>("waitFor", { finished: size.jobs, timeoutMs: 600_000 }, 610_000);
    const [c] = await connected;
    const w = await window.close();
    figure.processes = w.processes;
    figure.servers = w.servers;
    figure.metrics.jobsPerS = size.jobs / ((d.at - c!.startedAt) / 1000);
    return d.duplicates;
  });
}

function musterWithProducer(size: Size, run: number): Promise<Figure> {
  return musterCase(size, run, WITH_PRODUCER, async (fleet, figure) => {
    await connectAll(fleet, { mode: "finish" });
    const [agents] = fleet.agents;
    const window = await openWindow([fleet.server.child, agents, fleet.producer]);
    const done = agents.call<{ at: number; duplicates: number }>("waitFor", { finished: size.jobs, timeoutMs: 600_000 }, 610_000);
    const [p, d] = await Promise.all([submit(fleet, size), done]);
    const w = await window.close();
    figure.processes = w.processes;
    figure.servers = w.servers;
    figure.metrics.jobsPerS = size.jobs / ((d.at - p.startedAt) / 1000);
    figure.metrics.submitPerS = size.jobs / ((p.endedAt - p.startedAt) / 1000);
    if (p.errors > 0) figure.errors.push(`${p.errors} submits failed: ${p.firstError}`);
    return d.duplicates;
  });
}
