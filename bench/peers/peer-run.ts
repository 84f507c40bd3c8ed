// One run of a peer in a scenario (S2 drain, S3 open loop): its own prefix or
// schema, a worker process and a producer process, the measured window, the
// loss and duplicate checks, and clean-up.

import { performance } from "node:perf_hooks";
import { startChild, type Child } from "../lib/child.ts";
import { addProcessMetrics, addServerMetrics, emptyFigure, openWindow, type Figure, type Window } from "../lib/figure.ts";
import { latencyMetrics } from "../lib/latency.ts";
import { createSchema, deleteKeys, dropSchema, redisPrefix, runId, schemaName, withPg } from "../lib/stores.ts";
import { prepare, unfinished, type PeerContext, type PeerName } from "./systems.ts";

export async function withPeer<T>(system: PeerName, body: (ctx: PeerContext, worker: Child, producer: Child) => Promise<T>): Promise<T> {
  const id = runId();
  const ctx: PeerContext = {
    system,
    namespace: system === "bullmq" ? redisPrefix("bullmq", id).slice(0, -1) : schemaName(system, id),
    queue: "bench",
  };
  if (system !== "bullmq") await createSchema(ctx.namespace);
  const children: Child[] = [];
  try {
    await prepare(ctx);
    const worker = startChild({ name: "workers", script: "bench/peers/peer-worker.ts" });
    const producer = startChild({ name: "producer", script: "bench/peers/peer-producer.ts" });
    children.push(worker, producer);
    await Promise.all(children.map((c) => c.ready()));
    return await body(ctx, worker, producer);
  } finally {
    await Promise.all(children.map((c) => c.kill("SIGKILL")));
    if (system === "bullmq") await deleteKeys(`${ctx.namespace}:`);
    else await dropSchema(ctx.namespace);
  }
}

const pgCount = (sql: string) => withPg(async (c) => (await c.query(sql)).rows[0].n as number);

/** S2's two cases (bench/scenarios/s2-drain.ts), as the table's "case" column names them. */
export const BACKLOG = "backlog";
export const WITH_PRODUCER = "with producer";

export async function runPeer(scenario: string, system: PeerName, size: Record<string, number>, run: number): Promise<Figure[]> {
  if (scenario === "s2") return [await drainBacklog(system, size, run), await drain(system, size, run)];
  if (scenario === "s3") return openLoop(system, size, run);
  throw new Error(`no peer run for ${scenario}`);
}

type Produced = { startedAt: number; endedAt: number; errors: number; firstError: string };
type Drained = { lastCompletedAt: number; duplicates: number; distinct: number };

/** All jobs added first, then the workers start: jobs/s from their start to the last completion. */
function drainBacklog(system: PeerName, size: Record<string, number>, run: number): Promise<Figure> {
  return drainCase(system, size, run, BACKLOG, async (ctx, worker, producer) => {
    await producer.call("start", { ctx });
    const p = await producer.call<Produced>("closed", { count: size.jobs, concurrency: size.inFlight, namePrefix: "j" }, 600_000);
    const window = await openWindow([worker, producer]);
    const startedAt = performance.timeOrigin + performance.now();
    await worker.call("start", { ctx, workers: size.workers, slots: size.slots });
    const d = await worker.call<Drained>("waitFor", { completed: size.jobs, timeoutMs: 600_000 }, 610_000);
    return { p, d, startedAt, window: await window.close() };
  });
}

/** The workers run while the producer adds: jobs/s from the first add to the last completion. */
function drain(system: PeerName, size: Record<string, number>, run: number): Promise<Figure> {
  return drainCase(system, size, run, WITH_PRODUCER, async (ctx, worker, producer) => {
    await worker.call("start", { ctx, workers: size.workers, slots: size.slots });
    await producer.call("start", { ctx });
    const window = await openWindow([worker, producer]);
    const produced = producer.call<Produced>("closed", { count: size.jobs, concurrency: size.inFlight, namePrefix: "j" }, 600_000);
    const done = worker.call<Drained>("waitFor", { completed: size.jobs, timeoutMs: 600_000 }, 610_000);
    const [p, d] = await Promise.all([produced, done]);
    return { p, d, startedAt: p.startedAt, window: await window.close() };
  });
}

/** One run of an S2 case: `measure` adds and drains, and says from when the drain is timed. */
async function drainCase(
  system: PeerName,
  size: Record<string, number>,
  run: number,
  variant: string,
  measure: (ctx: PeerContext, worker: Child, producer: Child) => Promise<{ p: Produced; d: Drained; startedAt: number; window: Awaited<ReturnType<Window["close"]>> }>,
): Promise<Figure> {
  const figure = emptyFigure("s2", system, variant, run);
  await withPeer(system, async (ctx, worker, producer) => {
    const { p, d, startedAt, window } = await measure(ctx, worker, producer);
    figure.processes = window.processes;
    figure.servers = window.servers;
    figure.metrics.jobsPerS = size.jobs / ((d.lastCompletedAt - startedAt) / 1000);
    figure.metrics.submitPerS = size.jobs / ((p.endedAt - p.startedAt) / 1000);
    if (p.errors > 0) figure.errors.push(`${p.errors} adds failed: ${p.firstError}`);
    await worker.call("stop", undefined, 30_000);
    figure.lost = size.jobs - d.distinct + (await unfinished(ctx, pgCount));
    figure.duplicated = d.duplicates;
  });
  addProcessMetrics(figure, { workers: "workers", producer: "producer" });
  addServerMetrics(figure);
  return figure;
}

async function openLoop(system: PeerName, size: Record<string, number>, run: number): Promise<Figure[]> {
  const figures: Figure[] = [];
  const rates = [size.rate1, size.rate2, size.rate3].filter((r) => r > 0);
  await withPeer(system, async (ctx, worker, producer) => {
    await worker.call("start", { ctx, workers: size.workers, slots: size.slots });
    await producer.call("start", { ctx });
    let expected = 0;
    if (size.warmupMs > 0 && size.warmupRate > 0) {
      // Warm-up phase, not measured (bench/scenarios/s3-latency.ts).
      const w = await producer.call<{ submitted: unknown[]; errors: number }>(
        "open",
        { rate: size.warmupRate, durationMs: size.warmupMs, namePrefix: "warm" },
        600_000,
      );
      expected += w.submitted.length - w.errors;
      await worker.call("waitFor", { completed: expected, timeoutMs: 60_000 }, 70_000);
    }
    for (const rate of rates) {
      const figure = emptyFigure("s3", system, `${rate}/s`, run);
      const window = await openWindow([worker, producer]);
      const p = await producer.call<{ submitted: Array<[string, number]>; errors: number; firstError: string; overloaded: boolean; maxLagMs: number }>(
        "open",
        { rate, durationMs: size.durationMs, namePrefix: `r${rate}` },
        600_000,
      );
      expected += p.submitted.length - p.errors;
      const d = await worker.call<{ duplicates: number; distinct: number }>("waitFor", { completed: expected, timeoutMs: 60_000 }, 70_000).catch((error: Error) => {
        figure.notes.push(`${rate}/s not sustained: ${error.message.split("\n")[0]}`);
        return null;
      });
      const w = await window.close();
      figure.processes = w.processes;
      figure.servers = w.servers;
      const arrivals = await worker.call<Array<[string, number]>>("arrivals");
      Object.assign(figure.metrics, latencyMetrics(p.submitted, arrivals));
      figure.metrics.producerMaxLagMs = p.maxLagMs;
      if (p.overloaded) figure.notes.push(`${rate}/s: producer overloaded (more than 5,000 adds in flight)`);
      if (p.errors > 0) figure.errors.push(`${p.errors} adds failed: ${p.firstError}`);
      // An add that failed (the producer's error) was never accepted: an error, not a lost job.
      figure.lost = Math.max(0, figure.metrics.missing - p.errors);
      figure.duplicated = d?.duplicates ?? 0;
      addProcessMetrics(figure, { workers: "workers", producer: "producer" });
      addServerMetrics(figure);
      figures.push(figure);
    }
    await worker.call("stop", undefined, 30_000);
    const left = await unfinished(ctx, pgCount);
    if (left > 0) figures[figures.length - 1].lost += left;
  });
  return figures;
}
