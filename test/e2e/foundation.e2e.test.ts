// End to end on the real Postgres and Redis: one server process, three agent
// processes, thirty jobs, every log complete and in order, leases back to
// zero, and an agent killed and restarted on its stored credential.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService, JobState, FailureReason } from "../../gen/muster/v1/job_pb.js";
import { WorkerHealth, WorkerService } from "../../gen/muster/v1/worker_pb.js";
import { WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { createTestSchema, type TestSchema } from "../support/postgres.ts";
import { deleteKeysWithPrefix, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";
import { startAgent, startServer, stopAll, type ManagedProcess, type ServerProcess } from "../support/processes.ts";
import { waitUntil as waitFor } from "../support/wait.ts";

const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT]);

describe("foundation end to end (Postgres + Redis, real processes)", () => {
  let schema: TestSchema;
  let prefix: string;
  let dir: string;
  let server: ServerProcess;
  let pools: Client<typeof WorkerPoolService>;
  let workers: Client<typeof WorkerService>;
  let jobs: Client<typeof JobService>;
  let env: Record<string, string>;

  before(async () => {
    await requireRedis();
    schema = await createTestSchema("e2e");
    prefix = uniqueKeyPrefix("e2e");
    dir = await mkdtemp(path.join(tmpdir(), "muster-e2e-"));
    env = {
      MUSTER_DATABASE_URL: schema.url,
      MUSTER_DATABASE_SCHEMA: schema.schema,
      MUSTER_REDIS_URL: "redis://127.0.0.1:6379",
      MUSTER_REDIS_PREFIX: prefix,
      MUSTER_HEARTBEAT_INTERVAL_MS: "300",
      MUSTER_HEARTBEAT_TTL_MS: "5000",
      MUSTER_LEASE_TTL_MS: "10000",
      MUSTER_DATA_DIR: path.join(dir, "data"),
    };
    server = await startServer(env);
    const transport = createGrpcTransport({ baseUrl: `http://${server.api}` });
    pools = createClient(WorkerPoolService, transport);
    workers = createClient(WorkerService, transport);
    jobs = createClient(JobService, transport);
  });

  after(async () => {
    await stopAll();
    await schema?.drop();
    if (prefix !== undefined) await deleteKeysWithPrefix(prefix);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const waitUntil = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000) => waitFor(what, probe, timeoutMs, 100);

  function agent(name: string, token: string | null): ManagedProcess {
    const args = ["--url", server.agent, "--name", name, "--capacity", "2", "--state-dir", path.join(dir, name)];
    if (token !== null) args.push("--token", token);
    return startAgent({ MUSTER_LOG_LEVEL: "info" }, args);
  }

  async function readAll(jobId: string): Promise<{ seqs: bigint[]; text: string }> {
    const seqs: bigint[] = [];
    const parts: Buffer[] = [];
    for await (const response of jobs.getJobLogs({ jobId, fromSeq: 0n, follow: false })) {
      seqs.push(response.chunk!.seq);
      parts.push(Buffer.from(response.chunk!.data));
    }
    return { seqs, text: Buffer.concat(parts).toString("utf8") };
  }

  test("agents register, run 30 jobs with complete logs, and reconnect with their credential", { timeout: 120_000 }, async () => {
    const created = await pools.createWorkerPool({ name: "linux", description: "e2e pool" });
    const poolId = created.workerPool!.id;
    assert.match(created.registrationToken, /^mreg_/);

    const agents = ["a1", "a2", "a3"].map((name) => agent(name, created.registrationToken));
    await waitUntil("three healthy workers", async () => {
      const listed = await workers.listWorkers({ workerPoolId: poolId });
      const healthy = listed.workers.filter((w) => w.health === WorkerHealth.HEALTHY);
      return healthy.length === 3 ? listed : undefined;
    });

    const lines = 200;
    const submitted = await Promise.all(
      Array.from({ length: 30 }, (_, n) =>
        jobs.submitJob({
          name: `job-${n}`,
          workerPoolId: poolId,
          script: `for i in $(seq 1 ${lines}); do echo "job ${n} line $i"; done; echo "to stderr" >&2; sleep 0.2`,
        }),
      ),
    );
    const ids = submitted.map((r) => r.job!.id);
    const finished = await waitUntil(
      "30 jobs to end",
      async () => {
        const states = await Promise.all(ids.map((id) => jobs.getJob({ id })));
        return states.every((r) => TERMINAL.has(r.job!.state)) ? states.map((r) => r.job!) : undefined;
      },
      90_000,
    );
    for (const job of finished) {
      assert.equal(job.state, JobState.SUCCEEDED, `${job.name}: ${job.message}`);
      assert.equal(job.exitCode, 0);
      assert.notEqual(job.workerId, "");
      assert.equal(job.attempt, 1);
      assert.ok(job.placement?.workerReason, "placement explains the worker");
    }
    const usedWorkers = new Set(finished.map((job) => job.workerId));
    assert.equal(usedWorkers.size, 3, "jobs spread over all three workers");

    for (const [n, id] of ids.entries()) {
      const { seqs, text } = await readAll(id);
      assert.deepEqual(seqs, seqs.map((_, i) => BigInt(i + 1)), "sequence numbers contiguous from 1");
      const expected = Array.from({ length: lines }, (_, i) => `job ${n} line ${i + 1}`).join("\n") + "\n";
      assert.ok(text.startsWith(expected), `job ${n}: stdout complete and in order`);
      assert.ok(text.includes("to stderr\n"), `job ${n}: stderr captured`);
    }

    const afterJobs = await workers.listWorkers({ workerPoolId: poolId });
    assert.deepEqual(afterJobs.workers.map((w) => w.activeLeases), [0, 0, 0], "every lease released");

    // A non-zero exit is FAILED with the exit code.
    const failing = await jobs.submitJob({ name: "fails", workerPoolId: poolId, script: "echo bye; exit 3" });
    const failed = await waitUntil("failing job to end", async () => {
      const r = await jobs.getJob({ id: failing.job!.id });
      return TERMINAL.has(r.job!.state) ? r.job! : undefined;
    });
    assert.equal(failed.state, JobState.FAILED);
    assert.equal(failed.exitCode, 3);
    assert.equal(failed.failureReason, FailureReason.EXIT_CODE);

    // Following a running job's log streams it live and ends with the job.
    const slow = await jobs.submitJob({ name: "slow", workerPoolId: poolId, script: "echo first; sleep 1; echo second" });
    const followed: string[] = [];
    for await (const response of jobs.getJobLogs({ jobId: slow.job!.id, fromSeq: 0n, follow: true })) {
      followed.push(Buffer.from(response.chunk!.data).toString("utf8"));
    }
    assert.equal(followed.join(""), "first\nsecond\n");
    assert.equal((await jobs.getJob({ id: slow.job!.id })).job!.state, JobState.SUCCEEDED);

    // Kill an agent outright, restart it without a token: it reuses its stored
    // credential and comes back as the same worker.
    const before = await workers.listWorkers({ workerPoolId: poolId });
    await agents[0].stop("SIGKILL");
    const restarted = agent("a1", null);
    await waitUntil("a1 healthy again after restart", async () => {
      const listed = await workers.listWorkers({ workerPoolId: poolId });
      const a1 = listed.workers.find((w) => w.name === "a1");
      return listed.workers.length === 3 && a1?.health === WorkerHealth.HEALTHY && a1.connected ? a1 : undefined;
    });
    const afterRestart = await workers.listWorkers({ workerPoolId: poolId });
    assert.deepEqual(
      afterRestart.workers.map((w) => w.id).sort(),
      before.workers.map((w) => w.id).sort(),
      "no new worker registered",
    );
    const onRestarted = await jobs.submitJob({ name: "after-restart", workerPoolId: poolId, script: "echo ok" });
    const done = await waitUntil("job after restart", async () => {
      const r = await jobs.getJob({ id: onRestarted.job!.id });
      return TERMINAL.has(r.job!.state) ? r.job! : undefined;
    });
    assert.equal(done.state, JobState.SUCCEEDED);
    await restarted.stop("SIGTERM");
  });
});
