// One server for bench/api-call-cost.ts: a JobService whose SubmitJob answers
// at once with a fixed job, served one of three ways (argv[2]):
//   connect-node  connectNodeAdapter on node:http2, as connect-node serves it
//   muster        the same plus Muster's unary gRPC path (src/api/grpc-unary.ts)
//   grpc-js       @grpc/grpc-js's own server
// Listens on a free loopback port, reports it over IPC, and answers "cpu"
// messages with its process.cpuUsage().

import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { JobSchema, JobService, JobState, SubmitJobResponseSchema } from "../../gen/muster/v1/job_pb.js";
import { installGrpcUnaryPath, recordingRouter, type UnaryMethods } from "../../src/api/grpc-unary.ts";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";

const kind = process.argv[2];
const job = create(JobSchema, { id: "0195f0a2-1111-7000-8000-000000000000", name: "job", state: JobState.ASSIGNED, requestedWorkerPoolId: "pool" });
const impl = { submitJob: async () => ({ job }) };

function report(port: number): void {
  process.send!({ port });
}

if (kind === "connect-node" || kind === "muster") {
  const methods: UnaryMethods = new Map();
  const handler = connectNodeAdapter({ routes: (router) => void recordingRouter(router, methods).service(JobService, impl) });
  const server = http2.createServer(handler);
  if (kind === "muster") {
    const installed = installGrpcUnaryPath(server, methods, {
      readMaxBytes: 4 * 1024 * 1024,
      compressMinBytes: 1024,
      interceptors: [],
      shutdownSignal: new AbortController().signal,
    });
    if (!installed) throw new Error("the unary path could not be installed");
  }
  server.listen(0, "127.0.0.1", () => report((server.address() as AddressInfo).port));
} else if (kind === "grpc-js") {
  const server = new grpc.Server();
  server.addService(grpcJsServiceDefinition(JobService), {
    submitJob: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback(null, create(SubmitJobResponseSchema, { job })),
  });
  server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) => {
    if (error) throw error;
    report(port);
  });
} else {
  throw new Error(`unknown server kind ${kind}`);
}

process.on("message", (message) => {
  if (message === "cpu") process.send!({ cpu: process.cpuUsage() });
});
process.on("SIGTERM", () => process.exit(0));
