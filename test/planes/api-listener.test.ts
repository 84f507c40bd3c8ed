import assert from "node:assert/strict";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type HandlerContext } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as Wire } from "../../gen/health/v1/health_pb.js";
import { JobService, JobState } from "../../gen/muster/v1/job_pb.js";
import { createApiPlane, type ApiPlane } from "../../src/api/api-plane.ts";
import { HTTP2_PREFACE } from "../../src/api/preface-listener.ts";
import { createHealthStatus } from "../../src/grpc/health-service.ts";
import { silentLogger } from "../../src/logger.ts";
import { createMetrics } from "../../src/metrics.ts";
import { bufCurl, httpGet, tcpHandlesAfterSettling } from "./plane-helpers.ts";

/** A JobService that knows one job, and whose WatchJob holds the stream open until the call ends. */
const fakeJobs = {
  getJob({ id }: { id: string }) {
    if (id !== "job-1") throw new ConnectError(`job ${id} not found`, Code.NotFound);
    return { job: { id, name: "plan", state: JobState.RUNNING } };
  },
  submitJob({ name }: { name: string }) {
    return { job: { id: "job-2", name, state: JobState.QUEUED } };
  },
  async *watchJob({ id }: { id: string }, context: HandlerContext) {
    yield { job: { id, state: JobState.RUNNING } };
    await new Promise((resolve) => context.signal.addEventListener("abort", resolve, { once: true }));
  },
};

describe("API plane: one port for gRPC, gRPC-Web, Connect and plain HTTP/1.1", () => {
  let plane: ApiPlane;
  let port: number;
  let ready = false;
  const metrics = createMetrics();
  const health = createHealthStatus();
  let sessions: Http2SessionManager;

  before(async () => {
    plane = createApiPlane({
      host: "127.0.0.1",
      port: 0,
      logger: silentLogger(),
      routes: (router) => router.service(JobService, fakeJobs),
      health,
      readiness: async () => ({ ready, detail: { database: ready ? "ok" : "unreachable: test" } }),
      metrics: metrics.registry,
    });
    ({ port } = await plane.start());
    sessions = new Http2SessionManager(`http://127.0.0.1:${port}`);
  });

  after(async () => {
    sessions.abort();
    await plane.close();
  });

  const grpcClient = <T extends typeof JobService | typeof Health>(service: T) =>
    createClient(service, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}`, sessionManager: sessions }));

  it("serves gRPC over HTTP/2 with prior knowledge", async () => {
    const res = await grpcClient(JobService).getJob({ id: "job-1" });
    assert.equal(res.job?.name, "plan");
    await assert.rejects(grpcClient(JobService).getJob({ id: "nope" }), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.NotFound);
      return true;
    });
  });

  it("serves Connect (JSON) and gRPC-Web over HTTP/1.1 on the same port", async () => {
    const connect = createClient(
      JobService,
      createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1", useBinaryFormat: false }),
    );
    assert.equal((await connect.submitJob({ name: "migrate" })).job?.state, JobState.QUEUED);
    const grpcWeb = createClient(JobService, createGrpcWebTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }));
    assert.equal((await grpcWeb.getJob({ id: "job-1" })).job?.id, "job-1");
  });

  it("serves grpc.health.v1.Health from the shared status", async () => {
    const client = grpcClient(Health);
    assert.equal((await client.check({ service: "" })).status, Wire.SERVING);
    health.set("", "NOT_SERVING");
    assert.equal((await client.check({ service: "" })).status, Wire.NOT_SERVING);
    health.set("", "SERVING");
  });

  it("answers GET /healthz over HTTP/1.1 and HTTP/2", async () => {
    const res = await httpGet(port, "/healthz");
    assert.equal(res.httpVersion, "1.1");
    assert.equal(res.status, 200);
    assert.equal(res.body, "ok\n");

    const session = http2.connect(`http://127.0.0.1:${port}`);
    try {
      const stream = session.request({ ":path": "/healthz" });
      const [headers] = await Promise.all([
        new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("response", resolve)),
        new Promise((resolve) => stream.on("end", resolve).resume()),
      ]);
      assert.equal(headers[":status"], 200);
    } finally {
      session.close();
    }
  });

  it("answers /readyz with 503 until readiness says ready, with its detail as JSON", async () => {
    ready = false;
    const notReady = await httpGet(port, "/readyz");
    assert.equal(notReady.status, 503);
    assert.deepEqual(JSON.parse(notReady.body), { ready: false, detail: { database: "unreachable: test" } });
    ready = true;
    const nowReady = await httpGet(port, "/readyz");
    assert.equal(nowReady.status, 200);
    assert.deepEqual(JSON.parse(nowReady.body), { ready: true, detail: { database: "ok" } });
  });

  it("serves Prometheus metrics on GET /metrics", async () => {
    metrics.jobsSubmitted.inc({ pool: "pool-1" });
    const res = await httpGet(port, "/metrics");
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /^text\/plain/);
    assert.match(res.body, /^muster_jobs_submitted_total\{pool="pool-1"\} 1$/m);
    for (const name of ["muster_jobs_finished_total", "muster_placements_total", "muster_connected_agents", "muster_log_chunks_total", "muster_placement_seconds", "process_cpu_user_seconds_total"]) {
      assert.match(res.body, new RegExp(`^# TYPE ${name} `, "m"));
    }
  });

  it("answers 404 for unknown paths and 405 for non-GET endpoint requests", async () => {
    assert.equal((await httpGet(port, "/nope")).status, 404);
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port, path: "/metrics", method: "DELETE", agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("error", reject).end();
    });
    assert.equal(status, 405);
  });

  it("recognises the HTTP/2 preface even when it arrives in pieces", async () => {
    const socket = net.connect(port, "127.0.0.1");
    try {
      await new Promise((resolve) => socket.once("connect", resolve));
      socket.write(HTTP2_PREFACE.subarray(0, 5));
      await new Promise((resolve) => setTimeout(resolve, 50));
      socket.write(HTTP2_PREFACE.subarray(5));
      socket.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])); // empty SETTINGS frame
      const first = await new Promise<Buffer>((resolve) => socket.once("data", resolve));
      assert.equal(first[3], 4, "the server answers with an HTTP/2 SETTINGS frame");
    } finally {
      socket.destroy();
    }
  });

  it("rejects request messages over 4 MiB with RESOURCE_EXHAUSTED", async () => {
    await assert.rejects(grpcClient(JobService).submitJob({ name: "big", script: "x".repeat(5 * 1024 * 1024) }), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.ResourceExhausted);
      return true;
    });
  });

  it("describes every routed service through reflection (buf curl)", async () => {
    const methods = (await bufCurl(port, ["--list-methods"])).trim().split("\n");
    for (const method of ["muster.v1.JobService/GetJob", "muster.v1.JobService/WatchJob", "grpc.health.v1.Health/Check"]) {
      assert.ok(methods.includes(method), `${method} in ${methods.join(", ")}`);
    }
    const alpha = await bufCurl(port, ["--reflect-protocol", "grpc-v1alpha", "--list-services"]);
    assert.ok(alpha.split("\n").includes("muster.v1.JobService"));
  });

  it("lets buf curl encode a JSON request through reflection", async () => {
    const out = await bufCurl(port, ["-d", '{"service": ""}'], "/grpc.health.v1.Health/Check");
    assert.deepEqual(JSON.parse(out), { status: "SERVING" });
    const job = await bufCurl(port, ["-d", '{"id": "job-1"}'], "/muster.v1.JobService/GetJob");
    assert.equal(JSON.parse(job).job.state, "JOB_STATE_RUNNING");
  });
});

describe("API plane shutdown", () => {
  it("ends open streams with UNAVAILABLE, closes every connection and leaves no socket open", async () => {
    const plane = createApiPlane({
      host: "127.0.0.1",
      port: 0,
      logger: silentLogger(),
      routes: (router) => router.service(JobService, fakeJobs),
      health: createHealthStatus(),
      readiness: async () => ({ ready: true, detail: {} }),
      metrics: createMetrics().registry,
    });
    const { port } = await plane.start();
    const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` });
    const stream = createClient(JobService, transport).watchJob({ id: "job-1" });
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).value?.job?.state, JobState.RUNNING);
    // An idle HTTP/1.1 keep-alive connection, as a Prometheus scraper leaves behind.
    const agent = new http.Agent({ keepAlive: true });
    await new Promise<void>((resolve, reject) =>
      http.get({ host: "127.0.0.1", port, path: "/healthz", agent }, (res) => res.resume().on("end", resolve)).on("error", reject),
    );

    const started = Date.now();
    await plane.close();
    assert.ok(Date.now() - started < 2_000, "close does not wait for the grace period");
    await assert.rejects(iterator.next(), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.Unavailable);
      return true;
    });
    agent.destroy();
    assert.deepEqual(await tcpHandlesAfterSettling(), []);
    assert.equal(plane.state, "closed");
  });

  it("rejects start() on a port in use and stays closed", async () => {
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const { port } = blocker.address() as net.AddressInfo;
    const plane = createApiPlane({
      host: "127.0.0.1",
      port,
      logger: silentLogger(),
      routes: () => undefined,
      health: createHealthStatus(),
      readiness: async () => ({ ready: true, detail: {} }),
      metrics: createMetrics().registry,
    });
    await assert.rejects(plane.start(), /EADDRINUSE/);
    await plane.close();
    await new Promise((resolve) => blocker.close(resolve));
  });
});
