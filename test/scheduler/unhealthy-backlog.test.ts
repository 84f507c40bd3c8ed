// A pool with no healthy worker and a backlog of jobs waiting for one
// (queue_timeout). Every submit drains the pool; a pass that read the whole
// queue page by page cost each submit the whole backlog, and a pool whose
// workers were down for a while took submits at a few dozen a second. A pass
// now reads one page, sees that the pool has no healthy worker at all, and
// looks up only the jobs that cannot wait (no deadline, or one that passed),
// wherever they are in the queue.
//
// Real PGlite and the in-process lease store; the placer alone.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type { JobRecord } from "../../src/domain.ts";
import type { JobPlacer } from "../../src/scheduler/job-placer.ts";
import type { Database } from "../../src/stores/database.ts";
import { plainJob } from "../support/jobs.ts";
import { openPlacerHarness, type PlacerHarness } from "../support/placer.ts";
import { waitUntil } from "../support/wait.ts";

const SPACE = "unhealthy";
const TTL_MS = 60_000;
/** More than three pages of the placer's queue reads (64 jobs each). */
const BACKLOG = 200;

let db: Database;
let harness: PlacerHarness;
let placer: JobPlacer;
let poolId: string;
/** Queue pages read (jobs.queued calls) since the test last reset it. */
let pagesRead = 0;

before(async () => {
  harness = await openPlacerHarness({
    space: SPACE,
    ttlMs: TTL_MS,
    onQueueRead: () => {
      pagesRead++;
    },
  });
  ({ db, placer } = harness);
  // A pool whose workers are all away: none attached to the lease store.
  poolId = (await db.pools.create({ space: SPACE, name: "offline", description: "" })).id;
  placer.start();
});

after(async () => {
  await harness?.close();
});

function submit(name: string, queueTimeoutMs: number | null): Promise<JobRecord> {
  return placer.submit(plainJob({ space: SPACE, name, requestedPoolId: poolId, queueTimeoutMs }));
}

async function get(job: JobRecord): Promise<JobRecord> {
  const found = await db.jobs.get(job.id);
  assert.ok(found, `${job.name} exists`);
  return found;
}

test("a backlog waiting for a healthy worker: a submit reads one page of it, and jobs that cannot wait still fail", async () => {
  for (let n = 0; n < BACKLOG; n += 50) {
    const jobs = await Promise.all(Array.from({ length: 50 }, (_, k) => submit(`wait-${n + k}`, 600_000)));
    for (const job of jobs) assert.equal(job.state, "queued", `${job.name} waits for a healthy worker`);
  }
  const [first] = await db.jobs.queued(poolId, 1);
  assert.match(first!.workerReason, /^pool offline has no healthy worker; waiting for one until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

  // At the back of the queue: a job that did not ask to wait (queued while
  // the pool still had workers, say) and one whose wait is over.
  const noDeadline = await db.jobs.create(plainJob({ space: SPACE, name: "no-deadline", resolvedPoolId: poolId, poolRule: "explicit" }));
  const expired = await db.jobs.create(
    plainJob({ space: SPACE, name: "expired", resolvedPoolId: poolId, poolRule: "explicit", queueDeadline: new Date(Date.now() - 1000) }),
  );

  pagesRead = 0;
  const late = await submit("late", 600_000);
  assert.equal(late.state, "queued");
  assert.equal(pagesRead, 1, "the submit's pass read the first page of the queue, not all of it");
  for (const job of [noDeadline, expired]) {
    const now = await get(job);
    assert.equal(now.state, "failed", `${job.name} cannot wait: it fails although ${BACKLOG} jobs are ahead of it`);
    assert.equal(now.failureReason, "no_healthy_worker");
    assert.equal(now.message, "pool offline has no healthy worker");
  }

  // A submit that does not ask to wait fails at once, backlog or not.
  const plain = await submit("plain", null);
  assert.equal(plain.state, "failed");
  assert.equal(plain.failureReason, "no_healthy_worker");

  // A short wait behind the backlog ends on time (the queue-deadline sweep drains the pool).
  const short = await submit("short", 300);
  assert.equal(short.state, "queued");
  const ended = await waitUntil("the short wait ends", async () => {
    const now = await get(short);
    return now.state === "failed" ? now : undefined;
  });
  assert.equal(ended.failureReason, "no_healthy_worker");

  // The backlog still waits, each job with the reason it was first given.
  const stats = await db.jobs.queueStats(poolId);
  assert.equal(stats.queued, BACKLOG + 1);
  assert.equal((await get(first!)).workerReason, first!.workerReason);
});
