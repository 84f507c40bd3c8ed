// A replica that last found a pool's queue empty takes a new job's lease
// while it reads the queue (job-placer.ts, drainPass). When the queue holds a
// job after all (another replica queued it), that lease must go back and
// the older job must be placed first: a new job never overtakes an older one.
//
// Two servers share one schema, each with its own in-process lease store;
// the only worker is attached to the first. The second server can place
// nothing, so a job submitted there waits in the queue (it has a queue
// timeout), as a job another replica has just queued does.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService, JobState, type Job } from "../../gen/muster/v1/job_pb.js";
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

let schema: TestSchema;
let dir: string;
const servers: MusterServer[] = [];
let agent: Agent | undefined;

async function start(name: string): Promise<{ server: MusterServer; jobs: Client<typeof JobService>; pools: Client<typeof WorkerPoolService>; workers: Client<typeof WorkerService> }> {
  const config = loadConfig(["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"], {
    MUSTER_DATABASE_URL: schema.url,
    MUSTER_DATABASE_SCHEMA: schema.schema,
    MUSTER_DATA_DIR: path.join(dir, name),
    MUSTER_BUILTIN_WORKER: "disabled",
    MUSTER_HEARTBEAT_INTERVAL_MS: "200",
    MUSTER_HEARTBEAT_TTL_MS: "5000",
    MUSTER_LEASE_TTL_MS: "10000",
  });
  const server = await startServer(config, silentLogger());
  servers.push(server);
  const transport = createGrpcTransport({ baseUrl: `http://${server.api.host}:${server.api.port}` });
  return {
    server,
    jobs: createClient(JobService, transport),
    pools: createClient(WorkerPoolService, transport),
    workers: createClient(WorkerService, transport),
  };
}

before(async () => {
  schema = await createTestSchema("early_acquire");
  dir = await mkdtemp(path.join(tmpdir(), "muster-early-acquire-"));
});

after(async () => {
  await agent?.close();
  for (const server of servers.reverse()) await server.close();
  await schema?.drop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

test("a job another replica queued is placed before a newer job, though the queue was empty at the last look", async () => {
  const a = await start("a");
  const space = `s-${randomUUID().slice(0, 8)}`;
  const created = await a.pools.createWorkerPool({ space, name: "one-slot" });
  const poolId = created.workerPool!.id;
  const name = `w-${randomUUID().slice(0, 8)}`;
  const args = ["--url", `${a.server.agent.host}:${a.server.agent.port}`, "--token", created.registrationToken, "--name", name];
  args.push("--state-dir", path.join(dir, name), "--capacity", "1", "--backoff-initial-ms", "50", "--backoff-max-ms", "200");
  agent = createAgent(loadAgentConfig(args, {}), { logger: silentLogger() });
  await agent.start();
  await waitUntil("worker healthy", async () => ((await a.workers.getWorker({ id: agent!.workerId! })).worker?.health === WorkerHealth.HEALTHY ? true : undefined));
  const ended = (id: string) =>
    waitUntil(`job ${id} to end`, async () => {
      const job = (await a.jobs.getJob({ id })).job!;
      return TERMINAL.has(job.state) ? job : undefined;
    });

  // Server a places a job at once: its last look found the pool's queue empty.
  const first = (await a.jobs.submitJob({ space, name: "first", script: "true", workerPoolId: poolId })).job!;
  assert.equal(first.state, JobState.ASSIGNED);
  assert.equal((await ended(first.id)).state, JobState.SUCCEEDED);

  // Server b, which holds no worker, queues a job in the same pool.
  const b = await start("b");
  const older = (await b.jobs.submitJob({ space, name: "older", script: "sleep 0.5", workerPoolId: poolId, queueTimeout: durationFromMs(30_000) })).job!;
  assert.equal(older.state, JobState.QUEUED);

  // The one free slot goes to the older job; the newer one waits behind it.
  const newer = (await a.jobs.submitJob({ space, name: "newer", script: "true", workerPoolId: poolId })).job!;
  assert.equal(newer.state, JobState.QUEUED, "the newer job must not take the slot ahead of the older one");
  const [olderEnd, newerEnd] = await Promise.all([ended(older.id), ended(newer.id)]);
  assert.equal(olderEnd.state, JobState.SUCCEEDED);
  assert.equal(newerEnd.state, JobState.SUCCEEDED);
  const startedAt = (job: Job) => Number(job.startTime!.seconds) * 1e3 + job.startTime!.nanos / 1e6;
  assert.ok(startedAt(olderEnd) <= startedAt(newerEnd), "the older job started first");
});
