// Fault scenarios: a script that ignores SIGINT and SIGTERM (and starts a
// child that ignores them too) is cancelled with a grace period, or runs past
// its timeout. The agent interrupts, terminates, and kills the whole process
// group when the grace ends: the outcome is CANCELLED / TIMED_OUT and no
// process of the script survives.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { after, before, test } from "node:test";
import { createFaultEnv, JobState, waitUntil, type FaultEnv } from "./harness/fault-env.ts";

let env: FaultEnv;
let poolId: string;
before(async () => {
  env = await createFaultEnv({ label: "cancel" });
  const pool = await env.createPool("stubborn");
  poolId = pool.poolId;
  await env.startAgent("a", pool.token);
});
after(async () => {
  await env?.close();
});

/** Ignores INT and TERM, as does the child it leaves running; writes both pids to `pidFile`. */
function stubbornScript(pidFile: string): string {
  return [
    "trap '' INT TERM",
    `echo $$ > '${pidFile}'`,
    "( trap '' INT TERM; while true; do sleep 0.1; done ) &",
    `echo $! >> '${pidFile}'`,
    "echo started",
    "while true; do sleep 0.1; done",
  ].join("\n");
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function pidsOf(pidFile: string): Promise<number[]> {
  return waitUntil("the script's pids", async () => {
    const text = await readFile(pidFile, "utf8").catch(() => "");
    const pids = text.split("\n").filter(Boolean).map(Number);
    return pids.length === 2 ? pids : undefined;
  });
}

test("cancel with a grace period: a script ignoring SIGINT and SIGTERM is killed with its whole group", { timeout: 30_000 }, async () => {
  const pidFile = path.join(env.dir, "cancel.pids");
  const job = await env.submit(poolId, stubbornScript(pidFile));
  await env.waitUntilLogged(job.id, 1, 1);
  const pids = await pidsOf(pidFile);
  assert.ok(pids.every(alive));

  const cancelledAt = Date.now();
  await env.jobs.cancelJob({ id: job.id, gracePeriod: { seconds: 0n, nanos: 800_000_000 } });
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.CANCELLED, ended.message);
  assert.ok(Date.now() - cancelledAt >= 700, "the grace period was given before the kill");
  await waitUntil("every process of the script gone", async () => (pids.some(alive) ? undefined : true), 5000);
  await env.assertInvariants();
});

test("job timeout: TIMED_OUT, and nothing of the script survives", { timeout: 30_000 }, async () => {
  const pidFile = path.join(env.dir, "timeout.pids");
  const job = await env.submit(poolId, stubbornScript(pidFile), { timeout: { seconds: 1n, nanos: 0 } });
  const pids = await pidsOf(pidFile);
  const ended = await env.waitEnded(job.id);
  assert.equal(ended.state, JobState.TIMED_OUT, ended.message);
  await waitUntil("every process of the script gone", async () => (pids.some(alive) ? undefined : true), 5000);
  await env.assertInvariants();
});
