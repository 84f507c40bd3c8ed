// A restarting server listens for agents before its stores are open: an agent
// that reconnects meanwhile is held (stream open, Hello unanswered) instead of
// refused, and is welcomed with its running attempt adopted as soon as the
// stores are ready; if start-up fails instead, the held agents are told
// UNAVAILABLE and retry. Postgres sits behind a proxy the test holds shut.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { Health, HealthCheckRequestSchema, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { JobService, JobState } from "../../gen/muster/v1/job_pb.js";
import { WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { create } from "@bufbuild/protobuf";
import { createAgent, type Agent } from "../../agent/agent.ts";
import { loadAgentConfig } from "../../agent/config.ts";
import { loadConfig, type ServerConfig } from "../../src/config.ts";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";
import { silentLogger } from "../../src/logger.ts";
import { startServer, type MusterServer } from "../../src/server.ts";
import { startTcpProxy, type TcpProxy } from "../faults/harness/tcp-proxy.ts";
import { freePort } from "../support/net.ts";
import { createTestSchema, TEST_DATABASE_URL, type TestSchema } from "../support/postgres.ts";
import { deleteKeysWithPrefix, REDIS_URL, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";


const HealthClient = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(Health), "Health");

/** The agent plane's overall health, or the gRPC error code if the call failed. */
async function agentPlaneHealth(port: number): Promise<number | string> {
  const client = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    check(request: unknown, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response?: { status: number }) => void): void;
  };
  try {
    return await new Promise((resolve) =>
      client.check(create(HealthCheckRequestSchema, { service: "" }), { deadline: Date.now() + 2000 }, (error, response) =>
        resolve(error ? `error ${error.code}` : response!.status),
      ),
    );
  } finally {
    client.close();
  }
}

describe("server start-up with agents reconnecting", () => {
  let schema: TestSchema;
  let dir: string;
  let prefix: string;
  let agentPort: number;
  let pgProxy: TcpProxy;
  let server: MusterServer | undefined;
  let agent: Agent | undefined;
  const agentEvents: Array<Record<string, unknown> & { at: number }> = [];

  const configFor = (databaseUrl: string): ServerConfig =>
    loadConfig(["--api-addr", "127.0.0.1:0", "--agent-addr", `127.0.0.1:${agentPort}`], {
      MUSTER_DATABASE_URL: databaseUrl,
      MUSTER_DATABASE_SCHEMA: schema.schema,
      MUSTER_REDIS_URL: REDIS_URL,
      MUSTER_REDIS_PREFIX: prefix,
      MUSTER_DATA_DIR: dir,
      MUSTER_BUILTIN_WORKER: "disabled",
      MUSTER_HEARTBEAT_INTERVAL_MS: "200",
      MUSTER_LEASE_TTL_MS: "10000",
    });

  before(async () => {
    await requireRedis();
    schema = await createTestSchema("startup");
    prefix = uniqueKeyPrefix("startup");
    dir = await mkdtemp(path.join(tmpdir(), "muster-startup-"));
    agentPort = await freePort();
    pgProxy = await startTcpProxy(Number(new URL(TEST_DATABASE_URL).port || 5432));
  });

  after(async () => {
    await agent?.close();
    await server?.close();
    await pgProxy?.close();
    await schema?.drop();
    if (prefix !== undefined) await deleteKeysWithPrefix(prefix);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  test("an agent that reconnects while the stores open is held, then welcomed with its job adopted", { timeout: 60_000 }, async () => {
    const viaProxy = new URL(schema.url);
    viaProxy.port = String(pgProxy.port);
    server = await startServer(configFor(viaProxy.toString()), silentLogger());
    const api = createGrpcTransport({ baseUrl: `http://${server.api.host}:${server.api.port}` });
    const pools: Client<typeof WorkerPoolService> = createClient(WorkerPoolService, api);
    let jobs: Client<typeof JobService> = createClient(JobService, api);
    const created = await pools.createWorkerPool({ name: "linux" });
    const args = ["--url", `127.0.0.1:${agentPort}`, "--token", created.registrationToken, "--name", "s1", "--state-dir", path.join(dir, "s1")];
    args.push("--backoff-initial-ms", "50", "--backoff-max-ms", "100", "--log-flush-ms", "20");
    const logger = pino({ level: "info" }, { write: (line: string) => void agentEvents.push({ ...JSON.parse(line), at: Date.now() }) });
    agent = createAgent(loadAgentConfig(args, {}), { logger });
    await agent.start();
    const job = (await jobs.submitJob({ name: "long", workerPoolId: created.workerPool!.id, script: "echo start; sleep 4; echo end" })).job!;
    for (let i = 0; (await jobs.getJob({ id: job.id })).job!.state !== JobState.RUNNING; i++) {
      assert.ok(i < 200, "the job runs");
      await sleep(20);
    }

    // Restart with Postgres held shut: the new server cannot open its stores.
    await server.close();
    server = undefined;
    pgProxy.setMode("blackhole");
    const starting = startServer(configFor(viaProxy.toString()), silentLogger());
    starting.catch(() => {});
    for (let i = 0; (await agentPlaneHealth(agentPort)) !== HealthCheckResponse_ServingStatus.NOT_SERVING; i++) {
      assert.ok(i < 100, "the agent plane listens, not serving, before the stores are open");
      await sleep(50);
    }
    // The agent reconnects (backoff at most 100 ms) and is held: it neither
    // gets a Welcome nor is turned away while the stores stay shut.
    await sleep(1000);
    const heldSince = Date.now() - 1000;
    const disconnectsWhileHeld = agentEvents.filter((e) => e.event === "disconnected" && e.at > heldSince).length;
    assert.equal(disconnectsWhileHeld, 0, "the agent's call was held, not refused");
    assert.equal(agentEvents.filter((e) => e.event === "connected" && e.at > heldSince).length, 0, "no Welcome before the stores are open");

    const openedAt = Date.now();
    pgProxy.setMode("open");
    server = await starting;
    assert.equal(await agentPlaneHealth(agentPort), HealthCheckResponse_ServingStatus.SERVING);
    for (let i = 0; !agentEvents.some((e) => e.event === "connected" && e.at >= openedAt); i++) {
      assert.ok(i < 200, "the held agent is welcomed once the server is up");
      await sleep(10);
    }
    const welcome = agentEvents.find((e) => e.event === "connected" && e.at >= openedAt)!;
    assert.equal(welcome.adopted, 1, "its running attempt was adopted");

    jobs = createClient(JobService, createGrpcTransport({ baseUrl: `http://${server.api.host}:${server.api.port}` }));
    let ended = (await jobs.getJob({ id: job.id })).job!;
    for (let i = 0; i < 400 && ended.state !== JobState.SUCCEEDED && ended.state !== JobState.FAILED; i++) {
      await sleep(25);
      ended = (await jobs.getJob({ id: job.id })).job!;
    }
    assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
    assert.equal(ended.attempt, 1, "adopted, not run again");
    const chunks: string[] = [];
    for await (const r of jobs.getJobLogs({ jobId: job.id })) chunks.push(Buffer.from(r.chunk!.data).toString());
    assert.equal(chunks.join(""), "start\nend\n");
  });

  test("if start-up fails, an agent held meanwhile is told UNAVAILABLE", { timeout: 30_000 }, async () => {
    await agent?.close();
    agent = undefined;
    await server?.close();
    server = undefined;
    pgProxy.setMode("blackhole");
    const viaProxy = new URL(schema.url);
    viaProxy.port = String(pgProxy.port);
    const starting = startServer(configFor(viaProxy.toString()), silentLogger());
    const failed = starting.then(
      () => assert.fail("start-up should fail"),
      (error: unknown) => error,
    );
    for (let i = 0; (await agentPlaneHealth(agentPort)) !== HealthCheckResponse_ServingStatus.NOT_SERVING; i++) {
      assert.ok(i < 100, "the agent plane listens before the stores are open");
      await sleep(50);
    }
    // A Connect with any credential: held until start-up ends.
    const { AgentService } = await import("../../gen/muster/v1/agent_pb.js");
    const Agents = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(AgentService), "AgentService");
    const client = new Agents(`127.0.0.1:${agentPort}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      connect(metadata: grpc.Metadata): grpc.ClientDuplexStream<unknown, unknown>;
    };
    const metadata = new grpc.Metadata();
    metadata.set("authorization", "Bearer worker_nobody");
    const call = client.connect(metadata);
    const ended = new Promise<grpc.ServiceError>((resolve) => call.on("error", resolve));
    call.on("data", () => {});
    assert.equal(await Promise.race([ended, sleep(300, "held")]), "held", "the call is held while start-up waits for Postgres");
    pgProxy.setMode("refuse");
    pgProxy.reset();
    assert.ok((await failed) instanceof Error, "start-up failed");
    const error = await ended;
    assert.equal(error.code, grpc.status.UNAVAILABLE);
    assert.equal(error.details, "the server did not start");
    client.close();
    pgProxy.setMode("open");
  });
});
