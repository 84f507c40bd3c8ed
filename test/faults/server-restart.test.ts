// Fault scenario: the server is SIGKILLed while jobs run, then started again
// on the same Postgres and Redis. The agents reconnect (their proxies follow
// the new agent-plane port), the new server adopts their running attempts,
// and nothing is run twice.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { countedLines, countingScript, createFaultEnv, events, JobState, type FaultEnv } from "./harness/fault-env.ts";

let env: FaultEnv;
before(async () => {
  env = await createFaultEnv({ label: "server_kill", serverEnv: { MUSTER_LEASE_TTL_MS: "5000" } });
});
after(async () => {
  await env?.close();
});

test("server SIGKILL with running jobs, then restart: attempts adopted, nothing re-run", { timeout: 60_000 }, async () => {
  const { poolId, token } = await env.createPool("restart");
  const a = await env.startAgent("a", token);
  const b = await env.startAgent("b", token);
  await env.waitHealthy(poolId, ["a", "b"]);
  const jobs = await Promise.all([1, 2, 3].map(() => env.submit(poolId, countingScript(40, 75), { maxAttempts: 3 })));
  for (const job of jobs) await env.waitUntilLogged(job.id, 1, 2);

  await env.server.stop("SIGKILL");
  await env.restartServer();

  for (const agent of [a, b]) {
    await agent.proc.waitFor((line) => line.event === "connected" && Number(line.adopted) > 0, 15_000);
  }
  for (const job of jobs) {
    const ended = await env.waitEnded(job.id, 20_000);
    assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
    assert.equal(ended.attempt, 1, "the attempt was adopted, not run again");
    const log = await env.readLog(job.id, 1);
    assert.deepEqual(countedLines(log.data.toString()), Array.from({ length: 40 }, (_, i) => i + 1));
  }
  assert.equal(events(a.proc, "lease_lost").length + events(b.proc, "lease_lost").length, 0, "no agent was told to abandon");
  await env.assertInvariants();
  await Promise.all([a.proc.stop("SIGTERM"), b.proc.stop("SIGTERM")]);
});
