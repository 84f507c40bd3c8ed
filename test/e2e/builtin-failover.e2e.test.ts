// The built-in worker's attempts hold leases like any worker's: when the
// replica running one dies, another replica's reaper ends the attempt as
// WORKER_LOST and the job runs again, instead of staying RUNNING forever.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService, JobState } from "../../gen/muster/v1/job_pb.js";
import { createTestSchema, type TestSchema } from "../support/postgres.ts";
import { startServer, stopAll } from "../support/processes.ts";
import { deleteKeysWithPrefix, REDIS_URL, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";

describe("built-in worker failover", () => {
  let schema: TestSchema;
  let prefix: string;
  let dir: string;

  before(async () => {
    await requireRedis();
    schema = await createTestSchema("builtin_failover");
    prefix = uniqueKeyPrefix("builtin-failover");
    dir = await mkdtemp(path.join(tmpdir(), "muster-builtin-"));
  });

  after(async () => {
    await stopAll();
    await schema?.drop();
    if (prefix !== undefined) await deleteKeysWithPrefix(prefix);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  test("a job on a replica that dies is placed again on another replica", { timeout: 60_000 }, async () => {
    const env = (name: string) => ({
      MUSTER_DATABASE_URL: schema.url,
      MUSTER_DATABASE_SCHEMA: schema.schema,
      MUSTER_REDIS_URL: REDIS_URL,
      MUSTER_REDIS_PREFIX: prefix,
      MUSTER_DATA_DIR: path.join(dir, name),
      MUSTER_HEARTBEAT_INTERVAL_MS: "200",
      MUSTER_LEASE_TTL_MS: "1500",
    });
    const a = await startServer(env("a"));
    const jobsA = createClient(JobService, createGrpcTransport({ baseUrl: `http://${a.api}` }));
    const submitted = (await jobsA.submitJob({ name: "long", script: "echo attempt $MUSTER_ATTEMPT; sleep 2", maxAttempts: 2 })).job!;
    assert.equal(submitted.placement?.builtinWorker, true);
    assert.equal(submitted.state, JobState.RUNNING);

    const firstLog = async (client: typeof jobsA) => {
      const text: string[] = [];
      for await (const r of client.getJobLogs({ jobId: submitted.id, attempt: 1 })) text.push(Buffer.from(r.chunk!.data).toString());
      return text.join("");
    };
    for (let i = 0; i < 100 && (await firstLog(jobsA)) === ""; i++) await sleep(20);
    await a.stop("SIGKILL");
    const b = await startServer(env("b"));
    const jobsB = createClient(JobService, createGrpcTransport({ baseUrl: `http://${b.api}` }));
    let job = (await jobsB.getJob({ id: submitted.id })).job!;
    for (let i = 0; i < 300 && !(job.state === JobState.SUCCEEDED && job.attempt === 2); i++) {
      assert.notEqual(job.state, JobState.FAILED, job.message);
      await sleep(50);
      job = (await jobsB.getJob({ id: submitted.id })).job!;
    }
    assert.equal(job.state, JobState.SUCCEEDED);
    assert.equal(job.attempt, 2, "the lost attempt was replaced by a second one");
    assert.equal(await firstLog(jobsB), "attempt 1\n", "the first attempt's log is kept");
  });
});
