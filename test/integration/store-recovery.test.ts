// Redis forgets everything under Muster's prefix while a job runs: the
// server notices, rebuilds leases and sessions from Postgres (reporting
// not-ready meanwhile), and the job finishes on its first attempt — nothing re-run.
// (The fault suite covers FLUSHALL and a restart of a private redis-server.)

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService, JobState } from "../../gen/muster/v1/job_pb.js";
import { WorkerService } from "../../gen/muster/v1/worker_pb.js";
import { WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { createAgent, type Agent } from "../../agent/agent.ts";
import { loadAgentConfig } from "../../agent/config.ts";
import { loadConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/logger.ts";
import { startServer, type MusterServer } from "../../src/server.ts";
import { createTestSchema, type TestSchema } from "../support/postgres.ts";
import { deleteKeysWithPrefix, keysWithPrefix, REDIS_URL, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";

describe("lease store loss", () => {
  let schema: TestSchema;
  let dir: string;
  let prefix: string;
  let server: MusterServer;
  let agent: Agent;
  let pools: Client<typeof WorkerPoolService>;
  let workers: Client<typeof WorkerService>;
  let jobs: Client<typeof JobService>;

  before(async () => {
    await requireRedis();
    schema = await createTestSchema("recovery");
    prefix = uniqueKeyPrefix("recovery");
    dir = await mkdtemp(path.join(tmpdir(), "muster-recovery-"));
    const config = loadConfig(["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"], {
      MUSTER_DATABASE_URL: schema.url,
      MUSTER_DATABASE_SCHEMA: schema.schema,
      MUSTER_REDIS_URL: REDIS_URL,
      MUSTER_REDIS_PREFIX: prefix,
      MUSTER_DATA_DIR: dir,
      MUSTER_HEARTBEAT_INTERVAL_MS: "150",
      MUSTER_HEARTBEAT_TTL_MS: "3000",
      MUSTER_LEASE_TTL_MS: "5000",
    });
    server = await startServer(config, silentLogger());
    const transport = createGrpcTransport({ baseUrl: `http://${server.api.host}:${server.api.port}` });
    pools = createClient(WorkerPoolService, transport);
    workers = createClient(WorkerService, transport);
    jobs = createClient(JobService, transport);
  });

  after(async () => {
    await agent?.close();
    await server?.close();
    await schema?.drop();
    if (prefix !== undefined) await deleteKeysWithPrefix(prefix);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  test("a running job survives the loss and ends on its first attempt; placement resumes", { timeout: 30_000 }, async () => {
    const created = await pools.createWorkerPool({ name: "linux" });
    const poolId = created.workerPool!.id;
    const args = ["--url", `${server.agent.host}:${server.agent.port}`, "--token", created.registrationToken, "--name", "r1"];
    args.push("--state-dir", path.join(dir, "r1"), "--capacity", "2", "--backoff-initial-ms", "50", "--backoff-max-ms", "200");
    agent = createAgent(loadAgentConfig(args, {}), { logger: silentLogger() });
    await agent.start();

    const running = (await jobs.submitJob({ name: "long", workerPoolId: poolId, script: "echo start; sleep 2.5; echo end" })).job!;
    for (let i = 0; (await jobs.getJob({ id: running.id })).job!.state !== JobState.RUNNING; i++) {
      assert.ok(i < 100, "job running");
      await sleep(20);
    }

    await deleteKeysWithPrefix(prefix);
    assert.deepEqual(await keysWithPrefix(prefix), [], "Redis forgot everything of ours");

    let job = (await jobs.getJob({ id: running.id })).job!;
    for (let i = 0; i < 300 && job.state !== JobState.SUCCEEDED && job.state !== JobState.FAILED; i++) {
      await sleep(20);
      job = (await jobs.getJob({ id: running.id })).job!;
    }
    assert.equal(job.state, JobState.SUCCEEDED, job.message);
    assert.equal(job.attempt, 1, "not re-run");
    const chunks: string[] = [];
    for await (const r of jobs.getJobLogs({ jobId: running.id })) chunks.push(Buffer.from(r.chunk!.data).toString());
    assert.equal(chunks.join(""), "start\nend\n");

    const after = (await jobs.submitJob({ name: "after", workerPoolId: poolId, script: "echo again" })).job!;
    for (let i = 0; i < 200; i++) {
      const state = (await jobs.getJob({ id: after.id })).job!.state;
      if (state === JobState.SUCCEEDED) break;
      assert.notEqual(state, JobState.FAILED);
      await sleep(25);
    }
    assert.equal((await jobs.getJob({ id: after.id })).job!.state, JobState.SUCCEEDED);
    const listed = await workers.listWorkers({ workerPoolId: poolId });
    assert.equal(listed.workers[0].activeLeases, 0, "lease counts rebuilt, then released");
  });
});
