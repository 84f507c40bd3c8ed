// A pool whose workers are busy and whose queue is deep: each finish frees a
// slot, and the pass that follows places a job or two. A pass once read a
// page of 64 queued jobs (decoded whole: script, env, dates) for every few it
// placed, which in a 10,000-job drain read each queued job two or three
// times. A pass now starts with a page about twice the size of what the last
// one placed before its workers were full, and pages on when there is more
// room than that; the queue order and what gets placed do not change.
//
// Real PGlite and the in-process lease store; the placer alone.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import type { JobRecord } from "../../src/domain.ts";
import type { JobPlacer } from "../../src/scheduler/job-placer.ts";
import type { Database } from "../../src/stores/database.ts";
import type { LeaseStore } from "../../src/stores/lease-store.ts";
import { plainJob } from "../support/jobs.ts";
import { openPlacerHarness, type PlacerHarness } from "../support/placer.ts";

const SPACE = "pages";
const TTL_MS = 60_000;
const CAPACITY = 4;
/** More than three full pages (64 jobs each). */
const BACKLOG = 200;

let harness: PlacerHarness;
let db: Database;
let store: LeaseStore;
let placer: JobPlacer;
let poolId: string;
/** Queued jobs read (rows the queue reads returned) since the test last reset it. */
let rowsRead = 0;

before(async () => {
  harness = await openPlacerHarness({
    space: SPACE,
    ttlMs: TTL_MS,
    onQueueRead: (rows) => {
      rowsRead += rows;
    },
  });
  ({ db, store, placer } = harness);
  poolId = (await db.pools.create({ space: SPACE, name: "busy", description: "" })).id;
  const workerId = randomUUID();
  await store.attach({ workerId, poolId, capacity: CAPACITY, labels: [], acceptsWork: true }, "session", "replica", TTL_MS);
  await store.heartbeat(workerId, "session", TTL_MS, TTL_MS);
});

after(async () => {
  await harness?.close();
});

/** What the agent's finish does to the job and its lease, short of asking for a drain. */
async function finish(job: JobRecord): Promise<void> {
  const done = await db.jobs.transition(job.id, { states: ["assigned", "running"], attempt: job.attempt }, { state: "succeeded", endedAt: new Date() });
  assert.ok(done, `${job.name} was placed`);
  assert.ok(await store.release(job.id, job.attempt));
}

async function running(): Promise<JobRecord[]> {
  return (await db.jobs.list({ space: SPACE, state: "assigned" }, { limit: 100 })).sort((a, b) => a.name.localeCompare(b.name));
}

test("draining a deep queue a slot or two at a time reads about what it places, in queue order", async () => {
  const names = Array.from({ length: BACKLOG }, (_, n) => `job-${String(n).padStart(3, "0")}`);
  for (const name of names) await placer.submit(plainJob({ space: SPACE, name, requestedPoolId: poolId }));
  assert.deepEqual(
    (await running()).map((job) => job.name),
    names.slice(0, CAPACITY),
    "the first jobs took the worker's slots",
  );

  // Twenty rounds: one or two jobs finish, then the pass their finishes ask for.
  const started = [...names.slice(0, CAPACITY)];
  rowsRead = 0;
  let placed = 0;
  for (let round = 0; round < 20; round++) {
    const busy = await running();
    const ending = busy.slice(0, 1 + (round % 2));
    for (const job of ending) await finish(job);
    await placer.drainPool(poolId);
    const now = await running();
    assert.equal(now.length, CAPACITY, `round ${round}: the freed slots were filled`);
    for (const job of now) if (!started.includes(job.name)) started.push(job.name);
    placed += ending.length;
  }
  assert.deepEqual(started, names.slice(0, CAPACITY + placed), "jobs started in queue order");
  // 30 jobs placed over 20 passes. With a full first page per pass, 20 x 64 rows.
  assert.ok(rowsRead <= 20 * 16, `the passes read ${rowsRead} queued jobs to place ${placed}`);
});
