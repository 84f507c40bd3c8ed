// Muster's load generator: submits no-op jobs through the API plane (gRPC on
// connect-node, as an SDK client would), either closed loop (a fixed count
// with a bounded number in flight) or open loop (a fixed rate for a fixed
// time, whatever the replies do). Each job's name carries its number; the
// submit time is taken just before the request is sent, on the same clock
// (performance.timeOrigin + now()) the simulated agents stamp arrivals with.

import { performance } from "node:perf_hooks";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService } from "../../gen/muster/v1/job_pb.js";
import { serveCommands } from "../lib/ipc-child.ts";

const now = () => performance.timeOrigin + performance.now();
/** Open loop: submits still unanswered beyond this stop the generator (it reports the overload). */
const MAX_IN_FLIGHT = 5000;

function jobs(api: string) {
  return createClient(JobService, createGrpcTransport({ baseUrl: `http://${api}` }));
}

function request(poolId: string, name: string) {
  return { name, workerPoolId: poolId, script: "true", env: { N: name } };
}

serveCommands({
  async closed(args: { api: string; poolId: string; count: number; concurrency: number; namePrefix: string }) {
    const client = jobs(args.api);
    const startedAt = now();
    let next = 0;
    let errors = 0;
    let firstError = "";
    const submitted: Array<[string, number]> = [];
    const worker = async () => {
      while (next < args.count) {
        const name = `${args.namePrefix}-${next++}`;
        const t = now();
        try {
          await client.submitJob(request(args.poolId, name));
          submitted.push([name, t]);
        } catch (error) {
          errors++;
          firstError ||= String(error);
        }
      }
    };
    await Promise.all(Array.from({ length: args.concurrency }, worker));
    return { startedAt, endedAt: now(), submitted, errors, firstError };
  },

  async open(args: { api: string; poolId: string; rate: number; durationMs: number; namePrefix: string }) {
    const client = jobs(args.api);
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
        const name = `${args.namePrefix}-${sent++}`;
        const t = now();
        maxLagMs = Math.max(maxLagMs, t - scheduled);
        submitted.push([name, t]);
        const p: Promise<void> = client.submitJob(request(args.poolId, name)).then(
          () => {
            inFlight.delete(p);
          },
          (error) => {
            inFlight.delete(p);
            errors++;
            firstError ||= String(error);
          },
        );
        inFlight.add(p);
      }
      if (overloaded || now() - startedAt > args.durationMs * 3 + 10_000) break;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    await Promise.all(inFlight);
    return { startedAt, endedAt: now(), submitted, errors, firstError, overloaded, maxLagMs };
  },
});
