// Fault scenarios: bad input from agents. Oversized chunks are refused with
// RESOURCE_EXHAUSTED and the stream stays up (a real agent cuts its output to
// the server's limit); NUL bytes and invalid UTF-8 are stored as bytes; a
// worker reporting a job it does not hold is refused; malformed frames,
// unbounded Hellos and too many streams per credential are refused without
// harming anyone else; a worker deleted mid-stream loses its stream and its
// agent stops, and its job runs elsewhere.

import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { AcceptAssignmentSchema, AgentLogChunkSchema, FinishOutcome, FinishReportSchema, HelloSchema, RunningAttemptSchema } from "../../gen/muster/v1/agent_pb.js";
import { LogStream } from "../../gen/muster/v1/job_pb.js";
import { countedLines, countingScript, createFaultEnv, JobState, type AgentHandle, type FaultEnv } from "./harness/fault-env.ts";
import { startFakeAgent, type FakeAgent } from "./harness/fake-agent.ts";

const MAX_CHUNK = 4096;
const UNAVAILABLE_OR_UP = Symbol("up");

let env: FaultEnv;
let fakePool: { poolId: string; token: string };
let realPool: { poolId: string; token: string };
let fake: FakeAgent;
let real: AgentHandle;
before(async () => {
  env = await createFaultEnv({ label: "bad_input", serverEnv: { MUSTER_MAX_CHUNK_BYTES: String(MAX_CHUNK) } });
  fakePool = await env.createPool("fake");
  realPool = await env.createPool("real");
  fake = await startFakeAgent({ url: `127.0.0.1:${env.server.agentPort}`, token: fakePool.token, name: "fake" });
  real = await env.startAgent("real", realPool.token, ["--max-chunk-bytes", "65536"]);
  await env.waitHealthy(realPool.poolId, ["real"]);
  await env.waitHealthy(fakePool.poolId, ["fake"]);
});
after(async () => {
  fake?.close();
  await env?.close();
});

async function stillUp(agent: FakeAgent): Promise<boolean> {
  return (await Promise.race([agent.ended, sleep(300).then(() => UNAVAILABLE_OR_UP)])) === UNAVAILABLE_OR_UP;
}

test("oversized chunk: RESOURCE_EXHAUSTED, the stream stays up, the split chunk is stored", { timeout: 30_000 }, async () => {
  const job = await env.submit(fakePool.poolId, "echo never runs for real");
  const assignment = await fake.waitFor("assignment", (a) => a.jobId === job.id);
  const { jobId, attempt } = assignment;
  fake.send({ case: "accept", value: create(AcceptAssignmentSchema, { jobId, attempt }) });
  const chunk = (seq: bigint, bytes: number) => create(AgentLogChunkSchema, { jobId, attempt, seq, stream: LogStream.STDOUT, data: Buffer.alloc(bytes, 0x61) });
  fake.send({ case: "log", value: chunk(1n, MAX_CHUNK + 1) });
  const refused = await fake.waitFor("rejection", (r) => r.jobId === jobId);
  assert.equal(refused.code, grpc.status.RESOURCE_EXHAUSTED);
  fake.send({ case: "log", value: chunk(1n, MAX_CHUNK) });
  fake.send({ case: "log", value: chunk(2n, 1) });
  await fake.waitFor("ack", (a) => a.jobId === jobId && a.seq === 2n);
  fake.send({ case: "finish", value: create(FinishReportSchema, { jobId, attempt, outcome: FinishOutcome.EXITED, exitCode: 0, lastSeq: 2n }) });
  await fake.waitFor("ack", (a) => a.jobId === jobId && a.finished);
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED);
  assert.equal((await env.readLog(job.id)).data.byteLength, MAX_CHUNK + 1);
  assert.ok(await stillUp(fake), "the stream stayed up");
  await env.assertInvariants();
});

test("a real agent cuts its output to the server's chunk limit", { timeout: 30_000 }, async () => {
  const job = await env.submit(realPool.poolId, "head -c 100000 /dev/zero | tr '\\0' x");
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
  const chunks: number[] = [];
  for await (const response of env.jobs.getJobLogs({ jobId: job.id, fromSeq: 0n })) chunks.push(response.chunk!.data.byteLength);
  assert.equal(chunks.reduce((a, b) => a + b, 0), 100000);
  assert.ok(chunks.every((n) => n <= MAX_CHUNK), `every chunk within ${MAX_CHUNK} bytes`);
});

test("NUL bytes and invalid UTF-8 in output are stored and served as bytes", { timeout: 30_000 }, async () => {
  const file = path.join(env.dir, "random.bin");
  const job = await env.submit(realPool.poolId, `printf 'a\\0b\\377\\376c\\n'; head -c 20000 /dev/urandom | tee '${file}'`);
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
  const expected = Buffer.concat([Buffer.from([0x61, 0, 0x62, 0xff, 0xfe, 0x63, 0x0a]), await readFile(file)]);
  assert.ok((await env.readLog(job.id)).data.equals(expected), "the log is byte for byte what the script wrote");
});

test("a worker reporting a job it does not hold is refused; the job is unharmed", { timeout: 30_000 }, async () => {
  const job = await env.submit(realPool.poolId, countingScript(20, 50));
  await env.waitJob(job.id, "running", (j) => j.state === JobState.RUNNING);
  fake.send({ case: "log", value: create(AgentLogChunkSchema, { jobId: job.id, attempt: 1, seq: 1n, stream: LogStream.STDOUT, data: Buffer.from("line 999\n") }) });
  fake.send({ case: "finish", value: create(FinishReportSchema, { jobId: job.id, attempt: 1, outcome: FinishOutcome.EXITED, exitCode: 7, lastSeq: 1n }) });
  const unknown = randomUUID();
  fake.send({ case: "finish", value: create(FinishReportSchema, { jobId: unknown, attempt: 1, outcome: FinishOutcome.EXITED, exitCode: 0 }) });
  const denied = await fake.waitFor("rejection", (r) => r.jobId === job.id);
  assert.equal(denied.code, grpc.status.PERMISSION_DENIED);
  const lost = await fake.waitFor("rejection", (r) => r.jobId === unknown);
  assert.equal(lost.code, grpc.status.FAILED_PRECONDITION);
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED);
  assert.equal(ended.exitCode, 0);
  assert.deepEqual(countedLines((await env.readLog(job.id)).data.toString()), Array.from({ length: 20 }, (_, i) => i + 1));
  assert.ok(await stillUp(fake));
  await env.assertInvariants();
});

test("malformed frames and unbounded Hellos are refused without harming other agents", { timeout: 30_000 }, async () => {
  const raw = new grpc.Client(`127.0.0.1:${env.server.agentPort}`, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${fake.credential}`);
  const call = raw.makeBidiStreamRequest("/muster.v1.AgentService/Connect", (b: Buffer) => b, (b: Buffer) => b, metadata);
  const status = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
  call.on("error", () => {});
  call.on("data", () => {});
  call.write(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
  const malformed = await status;
  assert.notEqual(malformed.code, grpc.status.OK, "the malformed stream is ended");
  assert.equal(malformed.code, grpc.status.INVALID_ARGUMENT, `ended with ${grpc.status[malformed.code]}`);
  raw.close();

  const big = await startFakeAgent({ url: `127.0.0.1:${env.server.agentPort}`, identity: { workerId: fake.workerId, credential: fake.credential }, hello: false });
  big.send({
    case: "hello",
    value: create(HelloSchema, {
      workerId: fake.workerId,
      sessionId: randomUUID(),
      capacity: 1,
      running: Array.from({ length: 5000 }, () => create(RunningAttemptSchema, { jobId: randomUUID(), attempt: 1 })),
    }),
  });
  assert.equal((await big.ended).code, grpc.status.INVALID_ARGUMENT);
  big.close();

  assert.ok(await stillUp(fake), "the fake agent's own stream is untouched");
  const job = await env.submit(realPool.poolId, "echo fine");
  assert.equal((await env.waitEnded(job.id)).state, JobState.SUCCEEDED);
});

test("streams per credential are capped", { timeout: 30_000 }, async () => {
  const extra = await Promise.all(
    Array.from({ length: 5 }, () =>
      startFakeAgent({ url: `127.0.0.1:${env.server.agentPort}`, identity: { workerId: fake.workerId, credential: fake.credential }, hello: false }),
    ),
  );
  const outcomes = await Promise.all(extra.map(async (agent) => {
    const result = await Promise.race([agent.ended, sleep(1500).then(() => null)]);
    return result?.code ?? "open";
  }));
  for (const agent of extra) agent.close();
  assert.ok(outcomes.includes(grpc.status.RESOURCE_EXHAUSTED), `some streams refused (${outcomes.join(", ")})`);
  assert.ok(outcomes.filter((o) => o === "open").length <= 3, "at most four streams in all");
  assert.ok(await stillUp(fake));
});

test("worker deleted mid-stream: its agent stops, its job runs again elsewhere", { timeout: 45_000 }, async () => {
  const pool = await env.createPool("revoke");
  const doomed = await env.startAgent("doomed", pool.token);
  const job = await env.submit(pool.poolId, countingScript(30, 100), { maxAttempts: 2 });
  await env.waitUntilLogged(job.id, 1, 2);
  const survivor = await env.startAgent("survivor", pool.token);
  await env.waitHealthy(pool.poolId, ["survivor"]);
  const worker = await env.worker(pool.poolId, "doomed");
  await env.workers.deleteWorker({ id: worker!.id });
  assert.equal(await doomed.proc.exited, 3, "the agent stops: its credential was rejected");
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
  assert.equal(ended.attempt, 2);
  assert.equal(ended.workerId, (await env.worker(pool.poolId, "survivor"))!.id);
  await env.assertInvariants();
  await survivor.proc.stop("SIGTERM");
});
