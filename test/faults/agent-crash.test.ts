// Fault scenario: an agent is SIGKILLed mid-job. Its stream is gone past the
// lease TTL, so the attempt ends WORKER_LOST and the job is placed again on
// the other worker; the first attempt's log is kept.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { countedLines, countingScript, createFaultEnv, JobState, TIMINGS, type FaultEnv } from "./harness/fault-env.ts";

let env: FaultEnv;
before(async () => {
  env = await createFaultEnv({ label: "agent_kill" });
});
after(async () => {
  await env?.close();
});

test("agent SIGKILL mid-job: attempt ends worker_lost, the job runs again elsewhere, the first log is kept", { timeout: 60_000 }, async () => {
  const { poolId, token } = await env.createPool("crash");
  const a = await env.startAgent("a", token);
  const job = await env.submit(poolId, countingScript(30, 100), { maxAttempts: 2 });
  const running = await env.waitJob(job.id, "the job running on a", (j) => j.state === JobState.RUNNING);
  assert.equal(running.attempt, 1);
  const b = await env.startAgent("b", token);
  await env.waitHealthy(poolId, ["a", "b"]);
  await env.waitUntilLogged(job.id, 1, 3);

  const killedAt = Date.now();
  await a.proc.stop("SIGKILL");

  const rerun = await env.waitJob(job.id, "attempt 2", (j) => j.attempt === 2, TIMINGS.leaseTtlMs * 4);
  assert.ok(Date.now() - killedAt >= TIMINGS.leaseTtlMs * 0.8, "not re-placed before the lease TTL ran out");
  assert.equal(rerun.workerId, (await env.worker(poolId, "b"))!.id);
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
  assert.equal(ended.attempt, 2);

  const first = await env.readLog(job.id, 1);
  assert.ok(first.seqs.length > 0, "attempt 1's log is kept");
  const firstLines = countedLines(first.data.toString());
  assert.deepEqual(firstLines, firstLines.map((_, i) => i + 1), "attempt 1's log is a clean prefix");
  const second = await env.readLog(job.id, 2);
  assert.deepEqual(countedLines(second.data.toString()), Array.from({ length: 30 }, (_, i) => i + 1));
  await env.assertInvariants();
  await b.proc.stop("SIGTERM");
});
