// What one unary gRPC call costs in CPU, server and client side, for the
// servers and clients the API plane and the load generators could use:
// servers connect-node, muster (connect-node plus the unary path of
// src/api/grpc-unary.ts) and grpc-js; clients connect-node (gRPC transport)
// and grpc-js. Each pair makes N SubmitJob calls, 64 in flight, after a
// warm-up; pairs are interleaved round by round; medians are printed.
//
//   node bench/api-call-cost.ts [--calls 20000] [--rounds 3]

import { fork, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { JobService, SubmitJobRequestSchema } from "../gen/muster/v1/job_pb.js";
import { grpcJsServiceDefinition } from "../src/grpc/grpcjs-service.ts";
import { summarize } from "./lib/stats.ts";

const { values } = parseArgs({ options: { calls: { type: "string", default: "20000" }, rounds: { type: "string", default: "3" } } });
const CALLS = Number(values.calls);
const ROUNDS = Number(values.rounds);
const IN_FLIGHT = 64;
const SERVERS = ["connect-node", "muster", "grpc-js"] as const;
const CLIENTS = ["connect-node", "grpc-js"] as const;

const request = { name: "job-1", workerPoolId: "0195f0a2-1111-7000-8000-000000000001", script: "true", env: { N: "job-1" } };

function caller(client: (typeof CLIENTS)[number], port: number): { call: () => Promise<unknown>; close: () => void } {
  if (client === "connect-node") {
    const jobs = createClient(JobService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    return { call: () => jobs.submitJob(request), close: () => undefined };
  }
  const Client = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(JobService), "JobService");
  const jobs = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as {
    submitJob(request: unknown, callback: (error: Error | null) => void): void;
    close(): void;
  };
  const message = create(SubmitJobRequestSchema, request);
  return {
    call: () => new Promise<void>((resolve, reject) => jobs.submitJob(message, (error) => (error ? reject(error) : resolve()))),
    close: () => jobs.close(),
  };
}

async function serverCpu(server: ChildProcess): Promise<number> {
  server.send("cpu");
  for (;;) {
    const [message] = (await once(server, "message")) as [{ cpu?: NodeJS.CpuUsage }];
    if (message.cpu) return message.cpu.user + message.cpu.system;
  }
}

async function measure(serverKind: (typeof SERVERS)[number], clientKind: (typeof CLIENTS)[number]) {
  const server = fork(path.join(import.meta.dirname, "sim/api-call-server.ts"), [serverKind], { stdio: "inherit" });
  try {
    const [{ port }] = (await once(server, "message")) as [{ port: number }];
    const { call, close } = caller(clientKind, port);
    for (let i = 0; i < 2000; i++) await call();
    const server0 = await serverCpu(server);
    const client0 = process.cpuUsage();
    const started = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next++ < CALLS) await call();
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const client = process.cpuUsage(client0);
    const serverUs = (await serverCpu(server)) - server0;
    close();
    return { callsPerS: CALLS / seconds, serverUs: serverUs / CALLS, clientUs: (client.user + client.system) / CALLS };
  } finally {
    server.kill("SIGTERM");
    await once(server, "exit");
  }
}

const results = new Map<string, Array<{ callsPerS: number; serverUs: number; clientUs: number }>>();
for (let round = 1; round <= ROUNDS; round++) {
  for (const serverKind of SERVERS) {
    for (const clientKind of CLIENTS) {
      const key = `${serverKind}|${clientKind}`;
      const figure = await measure(serverKind, clientKind);
      results.set(key, [...(results.get(key) ?? []), figure]);
      console.error(`round ${round}: ${serverKind} server, ${clientKind} client: ${figure.serverUs.toFixed(0)} µs server, ${figure.clientUs.toFixed(0)} µs client`);
    }
  }
}

console.log(`\nUnary SubmitJob, ${CALLS} calls x ${ROUNDS} rounds, ${IN_FLIGHT} in flight; medians\n`);
console.log("| server | client | server CPU µs/call | client CPU µs/call | calls/s |");
console.log("|---|---|---|---|---|");
for (const [key, figures] of results) {
  const [serverKind, clientKind] = key.split("|");
  const m = (pick: (f: (typeof figures)[number]) => number) => summarize(figures.map(pick)).median;
  console.log(`| ${serverKind} | ${clientKind} | ${m((f) => f.serverUs).toFixed(0)} | ${m((f) => f.clientUs).toFixed(0)} | ${m((f) => f.callsPerS).toFixed(0)} |`);
}
