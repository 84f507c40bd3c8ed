// The placer's drain loop (job-placer.ts, drainPool): a pass may hand its
// writes (the assignment's commit and delivery) to the loop and let them
// finish in the background. A drain requested while the loop waits for those
// last writes must still get a pass of its own: the job the writes placed may
// already have finished and freed its worker. The loop once answered such a
// request without a pass and left the next job queued.
//
// Real PGlite and the in-process lease store; the delivery of the second
// assignment is held back so that the window stays open while the test asks.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import type { JobRecord } from "../../src/domain.ts";
import type { JobPlacer } from "../../src/scheduler/job-placer.ts";
import type { Database } from "../../src/stores/database.ts";
import type { LeaseStore } from "../../src/stores/lease-store.ts";
import { plainJob } from "../support/jobs.ts";
import { openPlacerHarness, type PlacerHarness } from "../support/placer.ts";
import { waitUntil } from "../support/wait.ts";

const SPACE = "drain";
const TTL_MS = 60_000;

let harness: PlacerHarness;
let db: Database;
let store: LeaseStore;
let placer: JobPlacer;
let poolId: string;
/** Deliveries wait for this; replaced to hold them back. */
let gate: Promise<void> = Promise.resolve();

before(async () => {
  harness = await openPlacerHarness({
    space: SPACE,
    ttlMs: TTL_MS,
    wrapLeases: (inner) => ({
      ...inner,
      async deliver(delivery) {
        await gate;
        return inner.deliver(delivery);
      },
    }),
  });
  ({ db, store, placer } = harness);
  poolId = (await db.pools.create({ space: SPACE, name: "one-slot", description: "" })).id;
  const workerId = randomUUID();
  await store.attach({ workerId, poolId, capacity: 1, labels: [], acceptsWork: true }, "session", "replica", TTL_MS);
  await store.heartbeat(workerId, "session", TTL_MS, TTL_MS);
});

after(async () => {
  await harness?.close();
});

function submit(name: string): Promise<JobRecord> {
  // The placer resolves the pool and stamps the job itself; of a plain job it takes what a submitter chooses.
  return placer.submit(plainJob({ space: SPACE, name, requestedPoolId: poolId }));
}

/** What the agent's finish does to the job and its lease, short of asking for a drain. */
async function finish(job: JobRecord): Promise<void> {
  const done = await db.jobs.transition(job.id, { states: ["assigned", "running"], attempt: job.attempt }, { state: "succeeded", endedAt: new Date() });
  assert.ok(done, `${job.name} was placed`);
  assert.ok(await store.release(job.id, job.attempt));
}

async function state(job: JobRecord): Promise<string | undefined> {
  return (await db.jobs.get(job.id))?.state;
}

test("a drain asked for while the last pass's writes are still going gets a pass of its own", async () => {
  const a = await submit("a");
  assert.equal(a.state, "assigned");
  const b = await submit("b");
  const c = await submit("c");
  assert.deepEqual([b.state, c.state], ["queued", "queued"]);

  // a ends; the pass that follows places b, whose delivery is held back.
  let open!: () => void;
  gate = new Promise((resolve) => {
    open = resolve;
  });
  await finish(a);
  const placingB = placer.drainPool(poolId);
  const placedB = await waitUntil("b assigned", async () => {
    const job = await db.jobs.get(b.id);
    return job?.state === "assigned" ? job : undefined;
  });
  assert.equal(await state(c), "queued", "one slot: c still waits");

  // b ends (as a quick job may) before its pass's writes are all done, and asks for a drain.
  await finish(placedB);
  const afterB = placer.drainPool(poolId);
  open();
  await Promise.all([placingB, afterB]);
  assert.equal(await state(c), "assigned", "the drain asked for after b ended placed c");
});
