// Fault scenario: the agent is asked to stop. The first SIGTERM drains: no
// new work, the running job finishes and is reported, heartbeats go on, the
// agent exits 0. A second SIGTERM cancels what still runs, reports it, and
// exits.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { countingScript, createFaultEnv, JobState, type FaultEnv } from "./harness/fault-env.ts";

let env: FaultEnv;
before(async () => {
  env = await createFaultEnv({ label: "agent_sigterm" });
});
after(async () => {
  await env?.close();
});

test("SIGTERM drains: running job finishes, no new work is taken, exit 0", { timeout: 45_000 }, async () => {
  const { poolId, token } = await env.createPool("drain");
  const s = await env.startAgent("s", token);
  const running = await env.submit(poolId, countingScript(20, 100));
  await env.waitUntilLogged(running.id, 1, 1);
  s.proc.child.kill("SIGTERM");
  await s.proc.waitFor((line) => line.event === "draining");
  await env.server.waitFor((line) => line.event === "agent_draining", 5000);
  const waiting = await env.submit(poolId, "echo later", { queueTimeout: { seconds: 20n, nanos: 0 } });

  const ended = await env.waitEnded(running.id);
  assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
  assert.equal(await s.proc.exited, 0);
  const stillWaiting = await env.job(waiting.id);
  assert.equal(stillWaiting.state, JobState.QUEUED, "the draining agent took no new work");

  const t = await env.startAgent("t", token);
  const later = await env.waitEnded(waiting.id);
  assert.equal(later.state, JobState.SUCCEEDED, later.message);
  assert.equal(later.workerId, (await env.worker(poolId, "t"))!.id);
  await env.assertInvariants();
  await t.proc.stop("SIGTERM");
});

test("a second SIGTERM cancels running jobs cleanly and exits", { timeout: 45_000 }, async () => {
  const { poolId, token } = await env.createPool("cancel-on-exit");
  const u = await env.startAgent("u", token);
  const job = await env.submit(poolId, countingScript(200, 100));
  await env.waitUntilLogged(job.id, 1, 1);
  u.proc.child.kill("SIGTERM");
  await u.proc.waitFor((line) => line.event === "draining");
  u.proc.child.kill("SIGTERM");
  assert.equal(await u.proc.exited, 0);
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.CANCELLED, ended.message);
  await env.assertInvariants();
});
