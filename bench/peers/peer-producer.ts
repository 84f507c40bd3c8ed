// A peer's load generator: closed loop (a count, a bounded number in flight)
// or open loop (a rate for a time), one add call per job, submit times on
// the same clock as the worker's start stamps. Mirrors bench/sim/muster-producer.ts.

import { performance } from "node:perf_hooks";
import { serveCommands } from "../lib/ipc-child.ts";
import { startProducer, type PeerContext, type Producer } from "./systems.ts";

const now = () => performance.timeOrigin + performance.now();
const MAX_IN_FLIGHT = 5000;
let producer: Producer | null = null;

serveCommands({
  async start(args: { ctx: PeerContext }) {
    producer = await startProducer(args.ctx);
  },
  async closed(args: { count: number; concurrency: number; namePrefix: string }) {
    const p = producer!;
    const startedAt = now();
    let next = 0;
    let errors = 0;
    let firstError = "";
    const worker = async () => {
      while (next < args.count) {
        const n = `${args.namePrefix}-${next++}`;
        try {
          await p.add({ n });
        } catch (error) {
          errors++;
          firstError ||= String(error);
        }
      }
    };
    await Promise.all(Array.from({ length: args.concurrency }, worker));
    return { startedAt, endedAt: now(), errors, firstError };
  },
  async open(args: { rate: number; durationMs: number; namePrefix: string }) {
    const p = producer!;
    const startedAt = now();
    const total = Math.round((args.rate * args.durationMs) / 1000);
    const submitted: Array<[string, number]> = [];
    const inFlight = new Set<Promise<void>>();
    let sent = 0;
    let errors = 0;
    let firstError = "";
    let overloaded = false;
    let maxLagMs = 0;
    while (sent < total) {
      const due = Math.min(total, Math.floor(((now() - startedAt) * args.rate) / 1000) + 1);
      while (sent < due) {
        if (inFlight.size >= MAX_IN_FLIGHT) {
          overloaded = true;
          break;
        }
        const scheduled = startedAt + (sent * 1000) / args.rate;
        const n = `${args.namePrefix}-${sent++}`;
        const t = now();
        maxLagMs = Math.max(maxLagMs, t - scheduled);
        submitted.push([n, t]);
        const q: Promise<void> = p.add({ n }).then(
          () => {
            inFlight.delete(q);
          },
          (error) => {
            inFlight.delete(q);
            errors++;
            firstError ||= String(error);
          },
        );
        inFlight.add(q);
      }
      if (overloaded || now() - startedAt > args.durationMs * 3 + 10_000) break;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await Promise.all(inFlight);
    return { startedAt, endedAt: now(), submitted, errors, firstError, overloaded, maxLagMs };
  },
  async close() {
    await producer?.close();
    producer = null;
  },
});
