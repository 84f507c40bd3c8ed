// Every placement rule of DESIGN ("Resolving a step's pool", "Choosing the
// worker"), one case per rule and per question users ask, against a real
// server (Postgres, in-process lease store) with real in-process agents.
// Each case runs in its own space, so each has its own default pool.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { FailureReason, JobService, JobState, PoolRule, type Job } from "../../gen/muster/v1/job_pb.js";
import { TargetService } from "../../gen/muster/v1/target_pb.js";
import { WorkerHealth, WorkerService } from "../../gen/muster/v1/worker_pb.js";
import { WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { createAgent, type Agent } from "../../agent/agent.ts";
import { loadAgentConfig } from "../../agent/config.ts";
import { loadConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/logger.ts";
import { startServer, type MusterServer } from "../../src/server.ts";
import { createTestSchema, type TestSchema } from "../support/postgres.ts";
import { waitUntil } from "../support/wait.ts";

const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT]);

interface Harness {
  server: MusterServer;
  pools: Client<typeof WorkerPoolService>;
  workers: Client<typeof WorkerService>;
  targets: Client<typeof TargetService>;
  jobs: Client<typeof JobService>;
  close(): Promise<void>;
}

async function harness(builtin: "enabled" | "disabled"): Promise<Harness> {
  const schema: TestSchema = await createTestSchema("rules");
  const dir = await mkdtemp(path.join(tmpdir(), "muster-rules-"));
  const config = loadConfig(["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"], {
    MUSTER_DATABASE_URL: schema.url,
    MUSTER_DATABASE_SCHEMA: schema.schema,
    MUSTER_DATA_DIR: dir,
    MUSTER_BUILTIN_WORKER: builtin,
    MUSTER_HEARTBEAT_INTERVAL_MS: "200",
    MUSTER_HEARTBEAT_TTL_MS: "5000",
    MUSTER_LEASE_TTL_MS: "10000",
  });
  const server = await startServer(config, silentLogger());
  const transport = createGrpcTransport({ baseUrl: `http://${server.api.host}:${server.api.port}` });
  return {
    server,
    pools: createClient(WorkerPoolService, transport),
    workers: createClient(WorkerService, transport),
    targets: createClient(TargetService, transport),
    jobs: createClient(JobService, transport),
    async close() {
      await server.close();
      await schema.drop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

describe("placement rules", () => {
  let h: Harness;
  let dir: string;
  const agents: Agent[] = [];

  before(async () => {
    h = await harness("enabled");
    dir = await mkdtemp(path.join(tmpdir(), "muster-rules-agents-"));
  });

  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await h?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const space = () => `s-${randomUUID().slice(0, 8)}`;

  async function defaultPoolOf(spaceName: string) {
    const listed = await h.pools.listWorkerPools({ space: spaceName });
    return listed.workerPools.find((p) => p.isDefault)!;
  }

  async function startWorker(token: string, options: { labels?: string[]; capacity?: number } = {}): Promise<Agent> {
    const name = `w-${randomUUID().slice(0, 8)}`;
    const args = ["--url", `${h.server.agent.host}:${h.server.agent.port}`, "--token", token, "--name", name, "--state-dir", path.join(dir, name)];
    args.push("--capacity", String(options.capacity ?? 1), "--backoff-initial-ms", "50", "--backoff-max-ms", "200");
    if (options.labels) args.push("--labels", options.labels.join(","));
    const agent = createAgent(loadAgentConfig(args, {}), { logger: silentLogger() });
    agents.push(agent);
    await agent.start();
    await waitUntil("worker healthy", async () => {
      const w = await h.workers.getWorker({ id: agent.workerId! });
      return w.worker?.health === WorkerHealth.HEALTHY ? true : undefined;
    });
    return agent;
  }

  async function tokenFor(poolId: string): Promise<string> {
    return (await h.pools.createRegistrationToken({ workerPoolId: poolId })).token;
  }

  async function finished(id: string): Promise<Job> {
    return waitUntil(`job ${id} to end`, async () => {
      const job = (await h.jobs.getJob({ id })).job!;
      return TERMINAL.has(job.state) ? job : undefined;
    });
  }

  test("no pool named: the space's default pool; with no workers there, the built-in worker", async () => {
    const s = space();
    const submitted = (await h.jobs.submitJob({ space: s, name: "t", script: "echo builtin" })).job!;
    const job = await finished(submitted.id);
    assert.equal(job.state, JobState.SUCCEEDED);
    assert.equal(job.placement?.poolRule, PoolRule.SPACE_DEFAULT);
    assert.equal(job.placement?.resolvedWorkerPoolId, (await defaultPoolOf(s)).id);
    assert.equal(job.placement?.builtinWorker, true);
    assert.equal((await h.jobs.listJobs({ space: s })).jobs.length, 1);
    assert.equal((await h.jobs.listJobs({ space: s, workerId: "not-a-worker" })).jobs.length, 0, "a malformed worker id matches nothing");
  });

  test("other pools existing change nothing about the default pool", async () => {
    const s = space();
    const linux = (await h.pools.createWorkerPool({ space: s, name: "linux" }));
    await startWorker(linux.registrationToken);
    const job = await finished((await h.jobs.submitJob({ space: s, name: "t", script: "true" })).job!.id);
    assert.equal(job.placement?.builtinWorker, true, "the built-in worker, not the linux pool's worker");
  });

  test("adding a worker to the default pool stops built-in use", async () => {
    const s = space();
    const deflt = await defaultPoolOf(s);
    const agent = await startWorker(await tokenFor(deflt.id));
    const job = await finished((await h.jobs.submitJob({ space: s, name: "t", script: "true" })).job!.id);
    assert.equal(job.placement?.builtinWorker, false);
    assert.equal(job.workerId, agent.workerId);
  });

  test("a default pool whose only worker is unhealthy: NO_HEALTHY_WORKER, the built-in worker is not used", async () => {
    const s = space();
    const deflt = await defaultPoolOf(s);
    const agent = await startWorker(await tokenFor(deflt.id));
    await agent.close();
    await waitUntil("worker unreachable", async () => {
      const w = await h.workers.getWorker({ id: agent.workerId! });
      return w.worker?.health === WorkerHealth.UNREACHABLE ? true : undefined;
    });
    const job = (await h.jobs.submitJob({ space: s, name: "t", script: "true" })).job!;
    assert.equal(job.state, JobState.FAILED);
    assert.equal(job.failureReason, FailureReason.NO_HEALTHY_WORKER);
    assert.equal(job.placement?.builtinWorker, false);
    assert.match(job.message, /no healthy worker/);
  });

  test("explicit default pool + a target with its own default pool: the target's pool", async () => {
    const s = space();
    const deflt = await defaultPoolOf(s);
    const azure = await h.pools.createWorkerPool({ space: s, name: "azure" });
    const agent = await startWorker(azure.registrationToken);
    const target = (await h.targets.createTarget({ space: s, name: "aks-prod", defaultWorkerPoolId: azure.workerPool!.id })).target!;
    const job = await finished((await h.jobs.submitJob({ space: s, name: "t", script: "true", workerPoolId: deflt.id, targetId: target.id })).job!.id);
    assert.equal(job.placement?.poolRule, PoolRule.TARGET_DEFAULT);
    assert.equal(job.placement?.resolvedWorkerPoolId, azure.workerPool!.id);
    assert.equal(job.workerId, agent.workerId);
    assert.match(job.placement!.poolReason, /aks-prod/);
  });

  test("explicit other pool + target: the explicit pool", async () => {
    const s = space();
    const azure = await h.pools.createWorkerPool({ space: s, name: "azure" });
    const linux = await h.pools.createWorkerPool({ space: s, name: "linux" });
    const agent = await startWorker(linux.registrationToken);
    const target = (await h.targets.createTarget({ space: s, name: "aks", defaultWorkerPoolId: azure.workerPool!.id })).target!;
    const job = await finished((await h.jobs.submitJob({ space: s, name: "t", script: "true", workerPoolId: linux.workerPool!.id, targetId: target.id })).job!.id);
    assert.equal(job.placement?.poolRule, PoolRule.EXPLICIT);
    assert.equal(job.workerId, agent.workerId);
  });

  test("a target's default pool with no healthy workers fails, naming the target", async () => {
    const s = space();
    const azure = await h.pools.createWorkerPool({ space: s, name: "azure" });
    const target = (await h.targets.createTarget({ space: s, name: "web-eu", defaultWorkerPoolId: azure.workerPool!.id })).target!;
    const job = (await h.jobs.submitJob({ space: s, name: "t", script: "true", targetId: target.id })).job!;
    assert.equal(job.state, JobState.FAILED);
    assert.equal(job.failureReason, FailureReason.NO_HEALTHY_WORKER);
    assert.match(job.message, /target web-eu/);
  });

  test("required labels pick the worker that carries them; none carrying them fails", async () => {
    const s = space();
    const pool = await h.pools.createWorkerPool({ space: s, name: "mixed" });
    await startWorker(pool.registrationToken, { labels: ["linux"] });
    const docker = await startWorker(pool.registrationToken, { labels: ["linux", "docker"] });
    const job = await finished((await h.jobs.submitJob({ space: s, name: "t", script: "true", workerPoolId: pool.workerPool!.id, requiredLabels: ["docker"] })).job!.id);
    assert.equal(job.workerId, docker.workerId);
    const none = (await h.jobs.submitJob({ space: s, name: "t", script: "true", workerPoolId: pool.workerPool!.id, requiredLabels: ["gpu"] })).job!;
    assert.equal(none.state, JobState.FAILED);
    assert.match(none.message, /none carries labels gpu/);
  });

  test("all healthy workers at capacity: the job waits in the queue, says why, and runs when capacity frees", async () => {
    const s = space();
    const pool = await h.pools.createWorkerPool({ space: s, name: "busy" });
    await startWorker(pool.registrationToken, { capacity: 1 });
    const first = (await h.jobs.submitJob({ space: s, name: "first", script: "sleep 1", workerPoolId: pool.workerPool!.id })).job!;
    const second = (await h.jobs.submitJob({ space: s, name: "second", script: "true", workerPoolId: pool.workerPool!.id })).job!;
    const third = (await h.jobs.submitJob({ space: s, name: "third", script: "true", workerPoolId: pool.workerPool!.id })).job!;
    assert.equal(second.state, JobState.QUEUED);
    const waiting = (await h.jobs.getJob({ id: third.id })).job!;
    assert.equal(waiting.state, JobState.QUEUED);
    assert.match(waiting.placement!.workerReason, /1 job ahead/);
    const stats = (await h.pools.getWorkerPool({ id: pool.workerPool!.id })).workerPool!;
    assert.equal(stats.queuedJobs, 2);
    assert.equal(stats.freeCapacity, 0);
    assert.equal(stats.healthyWorkers, 1);
    assert.ok(stats.oldestQueuedTime);
    for (const id of [first.id, second.id, third.id]) assert.equal((await finished(id)).state, JobState.SUCCEEDED);
  });

  test("waiting jobs start in queue order: priority first, then submission order; a new job never overtakes an older one", async () => {
    const s = space();
    const pool = await h.pools.createWorkerPool({ space: s, name: "order" });
    await startWorker(pool.registrationToken, { capacity: 1 });
    const poolId = pool.workerPool!.id;
    const blocker = (await h.jobs.submitJob({ space: s, name: "blocker", script: "sleep 1", workerPoolId: poolId })).job!;
    assert.equal(blocker.state, JobState.ASSIGNED);
    // Submitted one after another while the only slot is taken: all wait, then
    // run one at a time. (Submitted at once, 20 ms apart, a loaded machine could
    // deliver two requests in the other order, and the server's order is the queue's.)
    const submitted = [];
    for (const spec of [
      { name: "low-1", priority: 0 },
      { name: "high", priority: 5 },
      { name: "low-2", priority: 0 },
      { name: "low-3", priority: 0 },
    ]) {
      submitted.push((await h.jobs.submitJob({ space: s, script: "true", workerPoolId: poolId, ...spec })).job!);
    }
    for (const job of submitted) assert.equal(job.state, JobState.QUEUED, `${job.name} waits behind the blocker`);
    const ended = await Promise.all([blocker, ...submitted].map((job) => finished(job.id)));
    const started = ended.sort((a, b) => Number(a.startTime!.seconds - b.startTime!.seconds) * 1e9 + (a.startTime!.nanos - b.startTime!.nanos));
    assert.deepEqual(
      started.map((job) => job.name),
      ["blocker", "high", "low-1", "low-2", "low-3"],
    );
  });

  test("no healthy worker with queue_timeout: waits, then runs on a worker that arrives in time", async () => {
    const s = space();
    const pool = await h.pools.createWorkerPool({ space: s, name: "later" });
    const job = (await h.jobs.submitJob({ space: s, name: "t", script: "true", workerPoolId: pool.workerPool!.id, queueTimeout: durationFromMs(10_000) })).job!;
    assert.equal(job.state, JobState.QUEUED);
    assert.match(job.placement!.workerReason, /no healthy worker; waiting for one until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/);
    await startWorker(pool.registrationToken);
    assert.equal((await finished(job.id)).state, JobState.SUCCEEDED);
  });

  test("no healthy worker with a short queue_timeout: fails once it passes", async () => {
    const s = space();
    const pool = await h.pools.createWorkerPool({ space: s, name: "never" });
    const job = (await h.jobs.submitJob({ space: s, name: "t", script: "true", workerPoolId: pool.workerPool!.id, queueTimeout: durationFromMs(300) })).job!;
    assert.equal(job.state, JobState.QUEUED);
    const ended = await finished(job.id);
    assert.equal(ended.state, JobState.FAILED);
    assert.equal(ended.failureReason, FailureReason.NO_HEALTHY_WORKER);
  });

  test("an exclusive job waits for an idle worker, and the worker takes nothing else meanwhile", async () => {
    const s = space();
    const pool = await h.pools.createWorkerPool({ space: s, name: "excl" });
    await startWorker(pool.registrationToken, { capacity: 3 });
    const poolId = pool.workerPool!.id;
    const busy = (await h.jobs.submitJob({ space: s, name: "busy", script: "sleep 0.5", workerPoolId: poolId })).job!;
    const exclusive = (await h.jobs.submitJob({ space: s, name: "excl", script: "sleep 0.5", workerPoolId: poolId, exclusive: true })).job!;
    assert.equal(exclusive.state, JobState.QUEUED, "waits while the worker holds another lease");
    await waitUntil("exclusive job running", async () => {
      const job = (await h.jobs.getJob({ id: exclusive.id })).job!;
      return job.state === JobState.RUNNING ? job : undefined;
    });
    const other = (await h.jobs.submitJob({ space: s, name: "other", script: "true", workerPoolId: poolId })).job!;
    assert.equal(other.state, JobState.QUEUED, "no other lease while the exclusive job runs");
    for (const id of [busy.id, exclusive.id, other.id]) assert.equal((await finished(id)).state, JobState.SUCCEEDED);
  });
});

describe("placement rules with the built-in worker disabled", () => {
  let h: Harness;
  before(async () => {
    h = await harness("disabled");
  });
  after(async () => {
    await h?.close();
  });

  test("a default pool with no registered workers fails with BUILTIN_WORKER_DISABLED", async () => {
    const job = (await h.jobs.submitJob({ name: "t", script: "true" })).job!;
    assert.equal(job.state, JobState.FAILED);
    assert.equal(job.failureReason, FailureReason.BUILTIN_WORKER_DISABLED);
  });
});
