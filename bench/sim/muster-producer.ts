// Muster's load generator: submits no-op jobs through the API plane as unary
// gRPC calls (SubmitJob), either closed loop (a fixed count
// with a bounded number in flight) or open loop (a fixed rate for a fixed
// time, whatever the replies do). Each job's name carries its number; the
// submit time is taken just before the request is sent, on the same clock
// (performance.timeOrigin + now()) the simulated agents stamp arrivals with.
//
// The client is @grpc/grpc-js with the generated code (the library the agents
// use), because the generator shares two cores with the system it measures:
// per call it costs about 170-190 µs of CPU here, connect-node's client about
// 330 µs (`node bench/api-call-cost.ts`; BENCHMARKS.md). MUSTER_BENCH_CLIENT=connect
// runs it on connect-node's gRPC transport instead, as an SDK user would.

import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { JobService, SubmitJobRequestSchema } from "../../gen/muster/v1/job_pb.js";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";
import { serveCommands } from "../lib/ipc-child.ts";

const now = () => performance.timeOrigin + performance.now();
/** Open loop: submits still unanswered beyond this stop the generator (it reports the overload). */
const MAX_IN_FLIGHT = 5000;

type SubmitRequest = {
  name: string;
  workerPoolId: string;
  script: string;
  env: Record<string, string>;
  queueTimeout?: { seconds: bigint; nanos: number };
};

function jobs(api: string): { submitJob(request: SubmitRequest): Promise<unknown> } {
  if (process.env.MUSTER_BENCH_CLIENT === "connect") {
    return createClient(JobService, createGrpcTransport({ baseUrl: `http://${api}` }));
  }
  const Client = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(JobService), "JobService");
  const client = new Client(api, grpc.credentials.createInsecure()) as unknown as {
    submitJob(request: unknown, callback: (error: grpc.ServiceError | null, response: unknown) => void): void;
  };
  return {
    submitJob: (request) =>
      new Promise((resolve, reject) =>
        client.submitJob(create(SubmitJobRequestSchema, request), (error, response) => (error ? reject(error) : resolve(response))),
      ),
  };
}

/** `queueTimeoutMs`: the job waits that long for a healthy worker (a backlog built while the workers are away). */
function request(poolId: string, name: string, queueTimeoutMs = 0): SubmitRequest {
  const submit: SubmitRequest = { name, workerPoolId: poolId, script: "true", env: { N: name } };
  if (queueTimeoutMs > 0) submit.queueTimeout = { seconds: BigInt(Math.floor(queueTimeoutMs / 1000)), nanos: (queueTimeoutMs % 1000) * 1e6 };
  return submit;
}

serveCommands({
  async closed(args: { api: string; poolId: string; count: number; concurrency: number; namePrefix: string; queueTimeoutMs?: number }) {
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
          await client.submitJob(request(args.poolId, name, args.queueTimeoutMs));
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
