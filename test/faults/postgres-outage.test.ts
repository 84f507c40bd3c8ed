// Fault scenario: Postgres is unreachable for ten seconds (the server's
// connections go through a TCP proxy that resets them and refuses new ones;
// the shared Postgres itself is never stopped). Meanwhile nothing new is
// placed, agent streams stay up, and agents keep unacknowledged output and
// finish reports and retry them; when Postgres is back everything is
// recorded exactly once.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { countedLines, countingScript, createFaultEnv, events, JobState, type FaultEnv } from "./harness/fault-env.ts";

const OUTAGE_MS = 10_000;

let env: FaultEnv;
before(async () => {
  env = await createFaultEnv({ label: "pg_outage", proxyPostgres: true });
});
after(async () => {
  await env?.close();
});

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}

test("Postgres unreachable for 10 s: streams stay up, output and finishes retried, all recorded once", { timeout: 90_000 }, async () => {
  const pg = env.pgProxy!;
  const { poolId, token } = await env.createPool("outage");
  const a = await env.startAgent("a", token);
  const b = await env.startAgent("b", token);
  await env.waitHealthy(poolId, ["a", "b"]);
  // One job outlives the outage, one ends in the middle of it.
  const long = await env.submit(poolId, countingScript(70, 200), { maxAttempts: 2 });
  const short = await env.submit(poolId, countingScript(25, 100), { maxAttempts: 2 });
  await env.waitUntilLogged(long.id, 1, 2);
  await env.waitUntilLogged(short.id, 1, 2);
  const disconnectsBefore = events(a.proc, "disconnected").length + events(b.proc, "disconnected").length;

  pg.setMode("refuse");
  pg.reset();
  const outageEnds = Date.now() + OUTAGE_MS;
  await sleep(1000);
  await assert.rejects(env.submit(poolId, "echo never"), "no new job is accepted while Postgres is down");
  const workersDuring = await env.workers.listWorkers({ workerPoolId: poolId }).catch(() => null);
  if (workersDuring !== null) assert.ok(workersDuring.workers.every((w) => w.connected));
  await sleep(outageEnds - Date.now());
  pg.setMode("open");

  for (const [job, lines] of [[long, 70], [short, 25]] as const) {
    const ended = await env.waitEnded(job.id, 30_000);
    assert.equal(ended.state, JobState.SUCCEEDED, ended.message);
    assert.equal(ended.attempt, 1, "not placed again");
    const log = await env.readLog(job.id, 1);
    assert.deepEqual(countedLines(log.data.toString()), range(lines), "every line once, in order");
    assert.deepEqual(log.seqs, log.seqs.map((_, i) => BigInt(i + 1)));
  }
  const disconnectsAfter = events(a.proc, "disconnected").length + events(b.proc, "disconnected").length;
  assert.equal(disconnectsAfter, disconnectsBefore, "agent streams stayed up through the outage");
  assert.ok(events(a.proc, "rejection").length + events(b.proc, "rejection").length > 0, "the agents were told to retry");
  // Placement works again.
  const later = await env.submit(poolId, "echo after");
  assert.equal((await env.waitEnded(later.id)).state, JobState.SUCCEEDED);
  await env.assertInvariants();
  await Promise.all([a.proc.stop("SIGTERM"), b.proc.stop("SIGTERM")]);
});
