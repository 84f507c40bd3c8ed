// The admin surface as an operator uses it: default pools, pool deletion
// refusals, registration tokens, drain and delete of workers, spaces.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { AgentService, RegisterRequestSchema } from "../../gen/muster/v1/agent_pb.js";
import { JobService, JobState } from "../../gen/muster/v1/job_pb.js";
import { TargetService } from "../../gen/muster/v1/target_pb.js";
import { WorkerHealth, WorkerService, WorkerState } from "../../gen/muster/v1/worker_pb.js";
import { ListRegistrationTokensResponseSchema, WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { createAgent, type Agent } from "../../agent/agent.ts";
import { loadAgentConfig } from "../../agent/config.ts";
import { loadConfig } from "../../src/config.ts";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";
import { silentLogger } from "../../src/logger.ts";
import { startServer, type MusterServer } from "../../src/server.ts";
import { createTestSchema, type TestSchema } from "../support/postgres.ts";
import { waitUntil as waitFor } from "../support/wait.ts";

async function code(promise: Promise<unknown>): Promise<Code> {
  try {
    await promise;
  } catch (error) {
    return ConnectError.from(error).code;
  }
  assert.fail("the call succeeded but should have failed");
}

describe("admin surface", () => {
  let schema: TestSchema;
  let dir: string;
  let server: MusterServer;
  let pools: Client<typeof WorkerPoolService>;
  let workers: Client<typeof WorkerService>;
  let targets: Client<typeof TargetService>;
  let jobs: Client<typeof JobService>;
  const agents: Agent[] = [];

  before(async () => {
    schema = await createTestSchema("admin");
    dir = await mkdtemp(path.join(tmpdir(), "muster-admin-"));
    const config = loadConfig(["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"], {
      MUSTER_DATABASE_URL: schema.url,
      MUSTER_DATABASE_SCHEMA: schema.schema,
      MUSTER_DATA_DIR: dir,
      MUSTER_HEARTBEAT_INTERVAL_MS: "200",
      MUSTER_HEARTBEAT_TTL_MS: "5000",
    });
    server = await startServer(config, silentLogger());
    const transport = createGrpcTransport({ baseUrl: `http://${server.api.host}:${server.api.port}` });
    pools = createClient(WorkerPoolService, transport);
    workers = createClient(WorkerService, transport);
    targets = createClient(TargetService, transport);
    jobs = createClient(JobService, transport);
  });

  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await server?.close();
    await schema?.drop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const space = () => `s-${randomUUID().slice(0, 8)}`;

  const waitUntil = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000) => waitFor(what, probe, timeoutMs, 25);

  async function startWorker(token: string): Promise<Agent> {
    const name = `w-${randomUUID().slice(0, 8)}`;
    const args = ["--url", `${server.agent.host}:${server.agent.port}`, "--token", token, "--name", name, "--state-dir", path.join(dir, name)];
    const agent = createAgent(loadAgentConfig(args, {}), { logger: silentLogger() });
    agents.push(agent);
    await agent.start();
    return agent;
  }

  function register(token: string): Promise<grpc.status> {
    const Ctor = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(AgentService), "AgentService");
    const client = new Ctor(`${server.agent.host}:${server.agent.port}`, grpc.credentials.createInsecure()) as grpc.Client &
      Record<string, (req: object, cb: (err: grpc.ServiceError | null) => void) => void>;
    return new Promise((resolve) => {
      client.register(create(RegisterRequestSchema, { registrationToken: token, name: "probe", capacity: 1 }), (err) => {
        client.close();
        resolve(err === null ? grpc.status.OK : err.code);
      });
    });
  }

  test("each space has exactly one default pool; SetDefaultWorkerPool swaps it", async () => {
    const s = space();
    const linux = (await pools.createWorkerPool({ space: s, name: "linux" })).workerPool!;
    await pools.setDefaultWorkerPool({ id: linux.id });
    const listed = (await pools.listWorkerPools({ space: s })).workerPools;
    assert.deepEqual(listed.filter((p) => p.isDefault).map((p) => p.name), ["linux"]);
    // Concurrent swaps still leave exactly one default.
    const other = listed.find((p) => p.name === "default")!;
    await Promise.all([pools.setDefaultWorkerPool({ id: other.id }), pools.setDefaultWorkerPool({ id: linux.id }), pools.setDefaultWorkerPool({ id: other.id })]);
    assert.equal((await pools.listWorkerPools({ space: s })).workerPools.filter((p) => p.isDefault).length, 1);
  });

  test("names are unique per space, not across spaces", async () => {
    const a = space();
    const b = space();
    await pools.createWorkerPool({ space: a, name: "linux" });
    assert.equal(await code(pools.createWorkerPool({ space: a, name: "linux" })), Code.AlreadyExists);
    await pools.createWorkerPool({ space: b, name: "linux" });
    assert.equal(await code(pools.createWorkerPool({ space: "Not A Space", name: "x" })), Code.InvalidArgument);
  });

  test("DeleteWorkerPool refuses the default pool, a pool with workers, and a pool a target names", async () => {
    const s = space();
    const deflt = (await pools.listWorkerPools({ space: s })).workerPools.find((p) => p.isDefault)!;
    assert.equal(await code(pools.deleteWorkerPool({ id: deflt.id })), Code.FailedPrecondition);

    const busy = await pools.createWorkerPool({ space: s, name: "busy" });
    const agent = await startWorker(busy.registrationToken);
    assert.equal(await code(pools.deleteWorkerPool({ id: busy.workerPool!.id })), Code.FailedPrecondition);
    const running = (await jobs.submitJob({ space: s, name: "r", script: "sleep 5", workerPoolId: busy.workerPool!.id, maxAttempts: 2 })).job!;
    await waitUntil("job running", async () => ((await jobs.getJob({ id: running.id })).job!.state === JobState.RUNNING ? true : undefined));
    await pools.deleteWorkerPool({ id: busy.workerPool!.id, force: true });
    assert.equal(await code(workers.getWorker({ id: agent.workerId! })), Code.NotFound);
    const ended = (await jobs.getJob({ id: running.id })).job!;
    assert.equal(ended.state, JobState.FAILED, "the job of a deleted pool ends instead of hanging");
    assert.match(ended.message, /deleted/);

    const named = (await pools.createWorkerPool({ space: s, name: "named" })).workerPool!;
    const target = (await targets.createTarget({ space: s, name: "aks", defaultWorkerPoolId: named.id })).target!;
    const refused = await pools.deleteWorkerPool({ id: named.id }).catch((e) => ConnectError.from(e));
    assert.ok(refused instanceof ConnectError);
    assert.equal(refused.code, Code.FailedPrecondition);
    assert.match(refused.rawMessage, /aks/);
    await pools.deleteWorkerPool({ id: named.id, clearTargetDefaults: true });
    assert.equal((await targets.getTarget({ id: target.id })).target!.defaultWorkerPoolId, "");
  });

  test("registration tokens: several per pool, listed without secrets, expired or revoked ones register nothing", async () => {
    const s = space();
    const created = await pools.createWorkerPool({ space: s, name: "tokens" });
    const poolId = created.workerPool!.id;
    const second = await pools.createRegistrationToken({ workerPoolId: poolId, description: "ci" });
    const listed = await pools.listRegistrationTokens({ workerPoolId: poolId });
    assert.equal(listed.registrationTokens.length, 2);
    assert.equal(toJsonString(ListRegistrationTokensResponseSchema, listed).includes(second.token), false, "secrets never listed");

    assert.equal(await register(second.token), grpc.status.OK);
    const used = (await pools.listRegistrationTokens({ workerPoolId: poolId })).registrationTokens.find((t) => t.id === second.registrationToken!.id)!;
    assert.ok(used.lastUsedTime, "last use recorded");

    await pools.revokeRegistrationToken({ id: second.registrationToken!.id });
    assert.equal(await register(second.token), grpc.status.UNAUTHENTICATED);
    assert.equal(await register("mreg_not-a-token"), grpc.status.UNAUTHENTICATED);
    assert.equal(await register(""), grpc.status.UNAUTHENTICATED);

    const soon = await pools.createRegistrationToken({ workerPoolId: poolId, expireTime: timestampFromDate(new Date(Date.now() + 300)) });
    await sleep(400);
    assert.equal(await register(soon.token), grpc.status.UNAUTHENTICATED);
    assert.equal(
      await code(pools.createRegistrationToken({ workerPoolId: poolId, expireTime: timestampFromDate(new Date(Date.now() - 1000)) })),
      Code.InvalidArgument,
    );
  });

  test("DrainWorker: no new leases, the running job finishes, the response says busy then idle", async () => {
    const s = space();
    const pool = await pools.createWorkerPool({ space: s, name: "drain" });
    const agent = await startWorker(pool.registrationToken);
    const poolId = pool.workerPool!.id;
    const running = (await jobs.submitJob({ space: s, name: "long", script: "sleep 0.6", workerPoolId: poolId })).job!;
    await waitUntil("job running", async () => ((await jobs.getJob({ id: running.id })).job!.state === JobState.RUNNING ? true : undefined));
    const drained = await workers.drainWorker({ id: agent.workerId! });
    assert.equal(drained.worker!.state, WorkerState.DRAINING);
    assert.equal(drained.busy, true);
    assert.equal(drained.safeToTerminate, false);
    const refused = (await jobs.submitJob({ space: s, name: "new", script: "true", workerPoolId: poolId })).job!;
    assert.equal(refused.state, JobState.FAILED, "a draining worker takes no new lease");
    await waitUntil("job done", async () => ((await jobs.getJob({ id: running.id })).job!.state === JobState.SUCCEEDED ? true : undefined));
    const idle = await workers.drainWorker({ id: agent.workerId! });
    assert.equal(idle.busy, false);
    assert.equal(idle.safeToTerminate, true);
  });

  test("DeleteWorker revokes its credential and closes its stream within a second", async () => {
    const s = space();
    const pool = await pools.createWorkerPool({ space: s, name: "delete" });
    const agent = await startWorker(pool.registrationToken);
    await waitUntil("healthy", async () => ((await workers.getWorker({ id: agent.workerId! })).worker!.health === WorkerHealth.HEALTHY ? true : undefined));
    const started = Date.now();
    await workers.deleteWorker({ id: agent.workerId! });
    const stop = await agent.stopped;
    assert.ok(Date.now() - started < 1000, "stream closed within a second");
    assert.equal(stop.exitCode, 3, "the agent sees its credential rejected");
    assert.equal(await code(workers.getWorker({ id: agent.workerId! })), Code.NotFound);
  });
});
