// A peer's worker process: all `workers` x `slots` of one system, recording
// when each job started (same clock as the producer's submit stamps) and
// how many completed.

import { performance } from "node:perf_hooks";
import { serveCommands } from "../lib/ipc-child.ts";
import { startWorkers, type PeerContext, type Workers } from "./systems.ts";

const now = () => performance.timeOrigin + performance.now();
const arrivals: Array<[string, number]> = [];
const started = new Set<string>();
let duplicates = 0;
let completed = 0;
let lastCompletedAt = 0;
let workers: Workers | null = null;

function stats() {
  return { started: arrivals.length, distinct: started.size, duplicates, completed, lastCompletedAt, at: now() };
}

serveCommands({
  async start(args: { ctx: PeerContext; workers: number; slots: number }) {
    workers = await startWorkers(
      args.ctx,
      { workers: args.workers, slots: args.slots },
      (payload) => {
        arrivals.push([payload.n, now()]);
        if (started.has(payload.n)) duplicates++;
        started.add(payload.n);
      },
      () => {
        completed++;
        lastCompletedAt = now();
      },
    );
  },
  stats,
  async waitFor(args: { completed: number; timeoutMs: number }) {
    const deadline = Date.now() + args.timeoutMs;
    while (completed < args.completed) {
      if (Date.now() > deadline) throw new Error(`timed out: ${completed}/${args.completed} completed`);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    return stats();
  },
  arrivals: () => arrivals,
  async stop() {
    await workers?.stop();
    workers = null;
  },
});
