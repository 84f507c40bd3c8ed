// Fault scenarios about liveness and slow readers.
//
// A stream that heartbeats but ignores its assignments is ended, so the
// worker stops counting as healthy, and the job goes to a worker that works.
// A follower reading a job's log at 1 KB/s while the job writes megabytes
// neither slows the job nor another follower, and costs bounded memory.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService } from "../../gen/muster/v1/job_pb.js";
import { createFaultEnv, JobState, TIMINGS, WorkerHealth, waitUntil, type FaultEnv } from "./harness/fault-env.ts";
import { startFakeAgent } from "./harness/fake-agent.ts";
import { startTcpProxy } from "./harness/tcp-proxy.ts";

let env: FaultEnv;
before(async () => {
  env = await createFaultEnv({ label: "liveness" });
});
after(async () => {
  await env?.close();
});

test("a stream alive on heartbeats but deaf to assignments is ended; the job runs elsewhere", { timeout: 45_000 }, async () => {
  const { poolId, token } = await env.createPool("deaf");
  const deaf = await startFakeAgent({ url: `127.0.0.1:${env.server.agentPort}`, token, name: "deaf" });
  await env.waitHealthy(poolId, ["deaf"]);
  const job = await env.submit(poolId, "echo done", { maxAttempts: 1 });
  await deaf.waitFor("assignment", (a) => a.jobId === job.id);
  const real = await env.startAgent("real", token);

  const end = await Promise.race([deaf.ended, sleep(TIMINGS.leaseTtlMs * 3).then(() => null)]);
  assert.ok(end !== null, "the deaf stream was ended although it kept heartbeating");
  const worker = await env.worker(poolId, "deaf");
  assert.notEqual(worker?.health, WorkerHealth.HEALTHY, "the deaf worker is not healthy");
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
  assert.equal(ended.workerId, (await env.worker(poolId, "real"))!.id);
  deaf.close();
  await env.assertInvariants();
  await real.proc.stop("SIGTERM");
});

async function rssKb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
}

test("a follower reading at 1 KB/s slows neither the job nor another follower", { timeout: 60_000 }, async () => {
  const { poolId, token } = await env.createPool("logs");
  const agent = await env.startAgent("writer", token);
  const rssBefore = await rssKb(env.server.child.pid!);
  const total = 40 * 100_001;
  const submittedAt = Date.now();
  const job = await env.submit(poolId, "sleep 0.5; for i in $(seq 1 40); do head -c 100000 /dev/zero | tr '\\0' x; echo; done");

  const apiPort = Number(env.server.api.split(":").pop());
  const slowProxy = await startTcpProxy(apiPort);
  slowProxy.setDownstreamRate(1024);
  const slowJobs = createClient(JobService, createGrpcTransport({ baseUrl: `http://${slowProxy.address}` }));
  const slowAbort = new AbortController();
  let slowBytes = 0;
  const slow = (async () => {
    for await (const response of slowJobs.getJobLogs({ jobId: job.id, fromSeq: 0n, follow: true }, { signal: slowAbort.signal })) {
      slowBytes += response.chunk!.data.byteLength;
    }
  })().catch(() => {});

  let fastBytes = 0;
  for await (const response of env.jobs.getJobLogs({ jobId: job.id, fromSeq: 0n, follow: true })) fastBytes += response.chunk!.data.byteLength;
  const fastDoneAt = Date.now();
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
  assert.equal(fastBytes, total, "the fast follower read everything");
  assert.ok(fastDoneAt - submittedAt < 20_000, `the fast follower finished in ${fastDoneAt - submittedAt} ms`);
  assert.ok(slowBytes < total / 4, `the slow follower is still behind (${slowBytes} bytes)`);
  const rssAfter = await rssKb(env.server.child.pid!);
  assert.ok(rssAfter - rssBefore < 150_000, `server memory grew by ${rssAfter - rssBefore} KB`);

  slowAbort.abort();
  await slow;
  await slowProxy.close();
  await waitUntil("the server still answers", async () => ((await env.job(job.id)).state === JobState.SUCCEEDED ? true : undefined));
  await env.assertInvariants();
  await agent.proc.stop("SIGTERM");
});
