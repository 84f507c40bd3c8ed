// A replica that found a pool's queue empty does not read it again on every
// pass: it trusts that for up to queue-recheck-ms, and the other replicas
// announce the jobs they queue (job-placer.ts, POOL_QUEUES_CHANNEL). These
// tests hold a job queued on one replica while room frees on another:
//
// - with the announcement heard, the job is placed at once, though the
//   trust would last another minute;
// - with the announcement lost (the replica that queued it has no shared
//   store: it might as well have died before publishing), the job is placed
//   once the trust runs out.
//
// The only worker (capacity 1) is attached to replica `a`. Its first job
// holds the slot for a second, so the job submitted on the other replica
// meanwhile waits in the queue; when the first job ends on `a`, the pass on
// `a` is the only one that can place it.

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
import { deleteKeysWithPrefix, REDIS_URL, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";
import { waitUntil } from "../support/wait.ts";

let schema: TestSchema;
let dir: string;
const prefixes: string[] = [];
const servers: MusterServer[] = [];
const agents: Agent[] = [];

interface Replica {
  server: MusterServer;
  jobs: Client<typeof JobService>;
  pools: Client<typeof WorkerPoolService>;
  workers: Client<typeof WorkerService>;
}

/** A replica on the test schema; `redisPrefix` null: its own in-process lease store, shared with nobody. */
async function start(name: string, redisPrefix: string | null, queueRecheckMs: number): Promise<Replica> {
  const env: Record<string, string> = {
    MUSTER_DATABASE_URL: schema.url,
    MUSTER_DATABASE_SCHEMA: schema.schema,
    MUSTER_DATA_DIR: path.join(dir, name),
    MUSTER_BUILTIN_WORKER: "disabled",
    MUSTER_HEARTBEAT_INTERVAL_MS: "200",
    MUSTER_HEARTBEAT_TTL_MS: "5000",
    MUSTER_LEASE_TTL_MS: "10000",
    MUSTER_QUEUE_RECHECK_MS: String(queueRecheckMs),
  };
  if (redisPrefix !== null) Object.assign(env, { MUSTER_REDIS_URL: REDIS_URL, MUSTER_REDIS_PREFIX: redisPrefix });
  const server = await startServer(loadConfig(["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"], env), silentLogger());
  servers.push(server);
  const transport = createGrpcTransport({ baseUrl: `http://${server.api.host}:${server.api.port}` });
  return {
    server,
    jobs: createClient(JobService, transport),
    pools: createClient(WorkerPoolService, transport),
    workers: createClient(WorkerService, transport),
  };
}

/** A pool with one worker of capacity 1, attached to `replica`. */
async function poolWithOneSlot(replica: Replica): Promise<{ space: string; poolId: string }> {
  const space = `s-${randomUUID().slice(0, 8)}`;
  const created = await replica.pools.createWorkerPool({ space, name: "one-slot" });
  const name = `w-${randomUUID().slice(0, 8)}`;
  const args = ["--url", `${replica.server.agent.host}:${replica.server.agent.port}`, "--token", created.registrationToken, "--name", name];
  args.push("--state-dir", path.join(dir, name), "--capacity", "1", "--backoff-initial-ms", "50", "--backoff-max-ms", "200");
  const agent = createAgent(loadAgentConfig(args, {}), { logger: silentLogger() });
  agents.push(agent);
  await agent.start();
  await waitUntil("worker healthy", async () =>
    (await replica.workers.getWorker({ id: agent.workerId! })).worker?.health === WorkerHealth.HEALTHY ? true : undefined,
  );
  return { space, poolId: created.workerPool!.id };
}

function waitForState(replica: Replica, id: string, state: JobState, what: string, timeoutMs: number): Promise<Job> {
  return waitUntil(
    what,
    async () => {
      const job = (await replica.jobs.getJob({ id })).job!;
      return job.state === state ? job : undefined;
    },
    timeoutMs,
  );
}

before(async () => {
  await requireRedis();
  schema = await createTestSchema("queue_announcements");
  dir = await mkdtemp(path.join(tmpdir(), "muster-queue-announcements-"));
});

after(async () => {
  for (const agent of agents) await agent.close();
  for (const server of servers.reverse()) await server.close();
  await schema?.drop();
  for (const prefix of prefixes) await deleteKeysWithPrefix(prefix);
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

test("a job another replica queued is placed as soon as room frees, though the queue was trusted empty for another minute", { timeout: 30_000 }, async () => {
  const prefix = uniqueKeyPrefix("queue-announcements");
  prefixes.push(prefix);
  const a = await start("heard-a", prefix, 60_000);
  const b = await start("heard-b", prefix, 60_000);
  const { space, poolId } = await poolWithOneSlot(a);

  // `a` places the first job: its pass finds the queue empty, and trusts that.
  const first = (await a.jobs.submitJob({ space, name: "first", script: "sleep 1", workerPoolId: poolId })).job!;
  assert.equal(first.state, JobState.ASSIGNED);
  // `b` queues the second job behind it (the one slot is taken) and announces it.
  const second = (await b.jobs.submitJob({ space, name: "second", script: "true", workerPoolId: poolId, queueTimeout: durationFromMs(60_000) })).job!;
  assert.equal(second.state, JobState.QUEUED);

  // The slot frees on `a`; `a` heard of the second job, so it reads the queue and places it.
  const firstEnd = await waitForState(a, first.id, JobState.SUCCEEDED, "the first job to succeed", 10_000);
  const secondEnd = await waitForState(a, second.id, JobState.SUCCEEDED, "the queued job to run once the slot freed (well before the minute of trust ran out)", 10_000);
  const at = (time: Job["endTime"]) => Number(time!.seconds) * 1e3 + time!.nanos / 1e6;
  assert.ok(at(secondEnd.startTime) - at(firstEnd.endTime) < 5_000, "placed within seconds of the slot freeing");
});

test("a job queued without an announcement is placed once the trust in the empty queue runs out", { timeout: 30_000 }, async () => {
  const prefix = uniqueKeyPrefix("queue-announcements");
  prefixes.push(prefix);
  const a = await start("lost-a", prefix, 2000);
  // No shared store: whatever `c` announces, `a` never hears it.
  const c = await start("lost-c", null, 2000);
  const { space, poolId } = await poolWithOneSlot(a);

  // The first job ends well within the 2 s `a` trusts its empty queue.
  const first = (await a.jobs.submitJob({ space, name: "first", script: "sleep 0.3", workerPoolId: poolId })).job!;
  assert.equal(first.state, JobState.ASSIGNED);
  // `c` sees no healthy worker; the job asked to wait, so it is queued.
  const unheard = (await c.jobs.submitJob({ space, name: "unheard", script: "true", workerPoolId: poolId, queueTimeout: durationFromMs(60_000) })).job!;
  assert.equal(unheard.state, JobState.QUEUED);

  // When the slot frees, `a` still trusts its empty queue and does not read
  // it; once the trust runs out (plus up to a sweep), it reads and places the job.
  await waitForState(a, first.id, JobState.SUCCEEDED, "the first job to succeed", 10_000);
  const end = await waitForState(a, unheard.id, JobState.SUCCEEDED, "the unannounced job to run after the recheck interval", 10_000);
  assert.equal(end.attempt, 1);
});
