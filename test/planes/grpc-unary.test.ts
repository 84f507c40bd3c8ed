// The API plane's short path for unary gRPC calls (src/api/grpc-unary.ts)
// must answer exactly as connect-node does. Each case is asked twice where it
// can be: once as plain unary gRPC (the short path) and once with a
// gzip-compressed request, which the short path leaves to connect-node.

import assert from "node:assert/strict";
import http2 from "node:http2";
import { Writable } from "node:stream";
import zlib from "node:zlib";
import { after, before, describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import {
  GetJobRequestSchema,
  GetJobResponseSchema,
  JobService,
  JobState,
  SubmitJobRequestSchema,
} from "../../gen/muster/v1/job_pb.js";
import { createApiPlane, type ApiPlane } from "../../src/api/api-plane.ts";
import { installGrpcUnaryPath, recordingRouter, type UnaryMethods } from "../../src/api/grpc-unary.ts";
import { createHealthStatus } from "../../src/grpc/health-service.ts";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";
import { createMetrics } from "../../src/metrics.ts";

/** What the fake service saw of its last calls. */
const seen = { timeoutMs: undefined as number | undefined, aborted: [] as string[], authorization: null as string | null };
/** Set while a "slow" SubmitJob waits. */
let slowWaiting = false;

const fakeJobs = {
  getJob({ id }: { id: string }, context: HandlerContext) {
    seen.authorization = context.requestHeader.get("authorization");
    if (id === "missing") {
      throw new ConnectError(`job ${id} not found`, Code.NotFound, { "x-muster-hint": "check the id" });
    }
    if (id === "crash") throw new Error("a bug, not a status");
    context.responseHeader.set("x-muster-replica", "r1");
    context.responseTrailer.set("x-muster-cost", "1");
    const name = id === "big" ? "n".repeat(64 * 1024) : "plan";
    return { job: { id, name, state: JobState.RUNNING } };
  },
  async submitJob({ name }: { name: string }, context: HandlerContext) {
    seen.timeoutMs = context.timeoutMs();
    if (name === "slow") {
      await new Promise<void>((resolve) => {
        slowWaiting = true;
        context.signal.addEventListener(
          "abort",
          () => {
            seen.aborted.push(ConnectError.from(context.signal.reason).code === Code.Canceled ? "canceled" : String(context.signal.reason));
            resolve();
          },
          { once: true },
        );
      });
      context.signal.throwIfAborted();
    }
    return { job: { id: "job-2", name, state: JobState.QUEUED } };
  },
};

/** A logger whose JSON lines land in `lines`. */
function capturingLogger(lines: Array<Record<string, unknown>>) {
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split("\n")) if (line !== "") lines.push(JSON.parse(line));
      done();
    },
  });
  return pino({ level: "debug" }, sink);
}

/** One raw HTTP/2 request: headers and body in, status, headers, body and trailers out. */
function rawCall(port: number, path: string, headers: http2.OutgoingHttpHeaders, body: Buffer) {
  return new Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", reject);
    const req = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    req.on("response", (h) => (responseHeaders = h));
    req.on("trailers", (t) => (trailers = t));
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", reject);
    req.on("close", () => {
      session.close();
      resolve({ headers: responseHeaders, trailers, body: Buffer.concat(chunks) });
    });
    req.end(body);
  });
}

function envelope(message: Uint8Array, flags = 0): Buffer {
  const frame = Buffer.alloc(5 + message.byteLength);
  frame[0] = flags;
  frame.writeUInt32BE(message.byteLength, 1);
  frame.set(message, 5);
  return frame;
}

/** The status of a raw response: from the trailers, or from the headers of a trailers-only response. */
function statusOf(reply: { headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders }) {
  const fields = reply.trailers["grpc-status"] !== undefined ? reply.trailers : reply.headers;
  return { code: Number(fields["grpc-status"]), message: decodeURIComponent(String(fields["grpc-message"] ?? "")) };
}

describe("API plane: unary gRPC short path", () => {
  let plane: ApiPlane;
  let port: number;
  let sessions: Http2SessionManager;
  const lines: Array<Record<string, unknown>> = [];

  before(async () => {
    plane = createApiPlane({
      host: "127.0.0.1",
      port: 0,
      logger: capturingLogger(lines),
      routes: (router) => router.service(JobService, fakeJobs),
      health: createHealthStatus(),
      readiness: async () => ({ ready: true, detail: {} }),
      metrics: createMetrics().registry,
    });
    ({ port } = await plane.start());
    sessions = new Http2SessionManager(`http://127.0.0.1:${port}`);
    // Every case below asks both paths: with the short path off, connect-node would answer both.
    assert.ok(!lines.some((line) => line.event === "grpc_unary_path_off"), "the short path is installed");
  });

  after(async () => {
    sessions.abort();
    await plane.close();
  });

  const client = (compressed: boolean) =>
    createClient(
      JobService,
      createGrpcTransport({
        baseUrl: `http://127.0.0.1:${port}`,
        sessionManager: sessions,
        ...(compressed ? { sendCompression: compressionGzip, compressMinBytes: 0 } : {}),
      }),
    );

  for (const compressed of [false, true]) {
    const via = compressed ? "connect-node (compressed request)" : "the short path";
    it(`answers, with the handler's headers and trailers, through ${via}`, async () => {
      const headers = new Headers();
      const trailers = new Headers();
      const res = await client(compressed).getJob(
        { id: "job-1" },
        { headers: { authorization: "Bearer t0k" }, onHeader: (h) => h.forEach((v, k) => headers.set(k, v)), onTrailer: (t) => t.forEach((v, k) => trailers.set(k, v)) },
      );
      assert.equal(res.job?.name, "plan");
      assert.equal(seen.authorization, "Bearer t0k");
      assert.equal(headers.get("x-muster-replica"), "r1");
      assert.equal(trailers.get("x-muster-cost"), "1");
    });

    it(`gives the error's code, message and metadata through ${via}`, async () => {
      await assert.rejects(client(compressed).getJob({ id: "missing" }), (error: unknown) => {
        const e = ConnectError.from(error);
        assert.equal(e.code, Code.NotFound);
        assert.equal(e.rawMessage, "job missing not found");
        assert.equal(e.metadata.get("x-muster-hint"), "check the id");
        return true;
      });
      await assert.rejects(client(compressed).getJob({ id: "crash" }), (error: unknown) => {
        const e = ConnectError.from(error);
        assert.equal(e.code, Code.Internal);
        assert.equal(e.rawMessage, "internal error", "the thrown error's text is not sent to the client");
        return true;
      });
    });

    it(`hands the deadline to the handler through ${via}`, async () => {
      await client(compressed).submitJob({ name: "quick" }, { timeoutMs: 30_000 });
      assert.ok(seen.timeoutMs !== undefined && seen.timeoutMs > 25_000 && seen.timeoutMs <= 30_000, `timeoutMs ${seen.timeoutMs}`);
    });
  }

  it("logs one line per call with its procedure, protocol and code", async () => {
    lines.length = 0;
    await client(false).getJob({ id: "job-1" });
    await client(false).getJob({ id: "missing" }).catch(() => undefined);
    const rpcLines = lines.filter((line) => line.procedure === "/muster.v1.JobService/GetJob");
    assert.deepEqual(
      rpcLines.map((line) => [line.protocol, line.code]),
      [
        ["grpc", "ok"],
        ["grpc", "NotFound"],
      ],
    );
  });

  it("serves grpc-js clients, with metadata both ways", async () => {
    const Client = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(JobService), "JobService");
    const grpcJs = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as {
      getJob(request: unknown, metadata: grpc.Metadata, callback: (error: grpc.ServiceError | null, response: any) => void): grpc.ClientUnaryCall;
      close(): void;
    };
    try {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", "Bearer js");
      const trailers = new Promise<grpc.Metadata>((resolve) => {
        const call = grpcJs.getJob(create(GetJobRequestSchema, { id: "job-1" }), metadata, () => undefined);
        call.on("status", (status: grpc.StatusObject) => resolve(status.metadata));
      });
      assert.equal((await trailers).get("x-muster-cost")[0], "1");
      assert.equal(seen.authorization, "Bearer js");
      const error = await new Promise<grpc.ServiceError>((resolve) =>
        grpcJs.getJob(create(GetJobRequestSchema, { id: "missing" }), new grpc.Metadata(), (e) => resolve(e!)),
      );
      assert.equal(error.code, grpc.status.NOT_FOUND);
      assert.equal(error.details, "job missing not found");
    } finally {
      grpcJs.close();
    }
  });

  it("gzips a large response when the client accepts gzip, and not otherwise", async () => {
    const request = envelope(toBinary(GetJobRequestSchema, create(GetJobRequestSchema, { id: "big" })));
    const zipped = await rawCall(port, "/muster.v1.JobService/GetJob", { "grpc-accept-encoding": "gzip" }, request);
    assert.equal(zipped.headers["grpc-encoding"], "gzip");
    assert.equal(zipped.body[0], 1, "the message is flagged compressed");
    assert.ok(zipped.body.byteLength < 8 * 1024, `${zipped.body.byteLength} bytes on the wire`);
    const job = fromBinary(GetJobResponseSchema, zlib.gunzipSync(zipped.body.subarray(5))).job;
    assert.equal(job?.name.length, 64 * 1024);
    const plain = await rawCall(port, "/muster.v1.JobService/GetJob", {}, request);
    assert.equal(plain.headers["grpc-encoding"], undefined);
    assert.equal(plain.body[0], 0);
    assert.equal(statusOf(plain).code, 0);
  });

  it("refuses malformed requests with connect-node's codes", async () => {
    const path = "/muster.v1.JobService/SubmitJob";
    const message = toBinary(SubmitJobRequestSchema, create(SubmitJobRequestSchema, { name: "x" }));
    const cases: Array<[string, Buffer, Code]> = [
      ["no message", Buffer.alloc(0), Code.Unimplemented],
      ["a cut envelope", envelope(message).subarray(0, 7), Code.InvalidArgument],
      ["two messages", Buffer.concat([envelope(message), envelope(message)]), Code.Unimplemented],
      ["a compressed flag without an encoding", envelope(message, 1), Code.Internal],
      ["bytes that are not the message", envelope(Buffer.from([0xff, 0xff, 0xff])), Code.Internal],
    ];
    for (const [what, body, code] of cases) {
      const reply = await rawCall(port, path, {}, body);
      assert.equal(statusOf(reply).code, code, what);
    }
    const bad = await rawCall(port, path, { "grpc-timeout": "soon" }, envelope(message));
    assert.equal(statusOf(bad).code, Code.InvalidArgument, "an unreadable grpc-timeout");
  });

  it("refuses an oversized message from its declared length, without reading it", async () => {
    const head = Buffer.alloc(5);
    head.writeUInt32BE(64 * 1024 * 1024, 1);
    const reply = await rawCall(port, "/muster.v1.JobService/SubmitJob", {}, Buffer.concat([head, Buffer.alloc(1024)]));
    const status = statusOf(reply);
    assert.equal(status.code, Code.ResourceExhausted);
    assert.match(status.message, /larger than configured readMaxBytes/);
  });

  it("aborts the handler's signal when the client cancels", async () => {
    seen.aborted.length = 0;
    const controller = new AbortController();
    const call = client(false).submitJob({ name: "slow" }, { signal: controller.signal });
    for (let i = 0; i < 500 && !slowWaiting; i++) await new Promise((r) => setTimeout(r, 5));
    assert.ok(slowWaiting, "the call reached the handler");
    controller.abort();
    await assert.rejects(call, (error: unknown) => ConnectError.from(error).code === Code.Canceled);
    for (let i = 0; i < 100 && seen.aborted.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(seen.aborted, ["canceled"]);
  });
});

describe("installGrpcUnaryPath", () => {
  it("takes plain unary gRPC calls it knows and leaves every other stream to the compatibility layer", async () => {
    const compatCalls: string[] = [];
    const server = http2.createServer((req, res) => {
      compatCalls.push(`${req.headers["content-type"]} ${req.url}`);
      res.writeHead(404).end();
    });
    const methods: UnaryMethods = new Map();
    recordingRouter(createConnectRouter(), methods).service(JobService, fakeJobs);
    assert.ok(methods.has("/muster.v1.JobService/GetJob"));
    assert.ok(!methods.has("/muster.v1.JobService/WatchJob"), "streaming methods are not taken");
    const installed = installGrpcUnaryPath(server, methods, {
      readMaxBytes: 1024,
      compressMinBytes: 1024,
      interceptors: [],
      shutdownSignal: new AbortController().signal,
    });
    assert.equal(installed, true);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as { port: number };
    try {
      const request = envelope(toBinary(GetJobRequestSchema, create(GetJobRequestSchema, { id: "job-1" })));
      const taken = await rawCall(port, "/muster.v1.JobService/GetJob", {}, request);
      assert.equal(statusOf(taken).code, 0);
      assert.equal(fromBinary(GetJobResponseSchema, taken.body.subarray(5)).job?.name, "plan");
      await rawCall(port, "/muster.v1.JobService/GetJob", { "content-type": "application/grpc-web+proto" }, request);
      await rawCall(port, "/muster.v1.JobService/GetJob", { "grpc-encoding": "gzip" }, request);
      await rawCall(port, "/muster.v1.JobService/WatchJob", {}, request);
      assert.deepEqual(compatCalls, [
        "application/grpc-web+proto /muster.v1.JobService/GetJob",
        "application/grpc /muster.v1.JobService/GetJob",
        "application/grpc /muster.v1.JobService/WatchJob",
      ]);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("installs nothing on a server without a compatibility listener", () => {
    const server = http2.createServer();
    const installed = installGrpcUnaryPath(server, new Map(), {
      readMaxBytes: 1024,
      compressMinBytes: 1024,
      interceptors: [],
      shutdownSignal: new AbortController().signal,
    });
    assert.equal(installed, false);
    assert.equal(server.listenerCount("stream"), 0);
  });
});
