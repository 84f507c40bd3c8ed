// GetJobLogs follow, on the memory lease store and a Postgres stand-in that
// holds the chunks the test says are stored.

import assert from "node:assert/strict";
import { test } from "node:test";
import type { JobRecord, LogChunkRecord } from "../domain.ts";
import type { Database } from "../stores/database.ts";
import { createMemoryLeaseStore } from "../stores/memory/memory-lease-store.ts";
import { createJobEvents } from "./job-events.ts";
import { readLogs } from "./log-reader.ts";

const jobId = "5d8e0f0a-0c9e-4e43-8c1f-1f6f1d2b7a10";

function fakeDb(state: { job: Partial<JobRecord>; stored: LogChunkRecord[] }) {
  const calls = { jobReads: 0, logReads: 0 };
  const db = {
    jobs: {
      async get() {
        calls.jobReads++;
        return { id: jobId, attempt: 1, ...state.job } as JobRecord;
      },
    },
    logs: {
      async read(_job: string, attempt: number, fromSeq: number, limit: number) {
        calls.logReads++;
        return state.stored.filter((c) => c.attempt === attempt && c.seq >= fromSeq).slice(0, limit);
      },
    },
  } as unknown as Database;
  return { db, calls };
}

const chunk = (seq: number, bytes = 10): LogChunkRecord => ({
  jobId,
  attempt: 1,
  seq,
  stream: "stdout",
  data: new Uint8Array(bytes).fill(seq & 0xff),
  time: new Date(),
});

test("a follower gets live chunks as they are published, and ends when the job does", async () => {
  const state = { job: { state: "running" } as Partial<JobRecord>, stored: [] as LogChunkRecord[] };
  const { db, calls } = fakeDb(state);
  const events = createJobEvents(createMemoryLeaseStore());
  const reader = readLogs(db, events, { jobId, attempt: 0, fromSeq: 0, follow: true, signal: new AbortController().signal });
  const seqs: number[] = [];
  const reading = (async () => {
    for await (const c of reader) seqs.push(c.seq);
  })();
  await new Promise((resolve) => setTimeout(resolve, 20));
  for (let seq = 1; seq <= 50; seq++) {
    state.stored.push(chunk(seq));
    await events.logs(jobId, [chunk(seq)]);
    await new Promise((resolve) => setImmediate(resolve));
  }
  state.job.state = "succeeded";
  await events.changed(jobId, "succeeded");
  await reading;
  assert.deepEqual(seqs, Array.from({ length: 50 }, (_, i) => i + 1));
  // Live chunks come from the channel: the job is not re-read for each of them.
  assert.ok(calls.jobReads <= 3, `the job was read ${calls.jobReads} times for 50 live chunks`);
});

test("a follower whose end-of-job announcement is lost still ends, with the whole log", { timeout: 15_000 }, async () => {
  const state = { job: { state: "running" } as Partial<JobRecord>, stored: [chunk(1)] };
  const { db } = fakeDb(state);
  const events = createJobEvents(createMemoryLeaseStore());
  const seqs: number[] = [];
  const reading = (async () => {
    for await (const c of readLogs(db, events, { jobId, attempt: 0, fromSeq: 0, follow: true, signal: new AbortController().signal })) seqs.push(c.seq);
  })();
  await new Promise((resolve) => setTimeout(resolve, 50));
  // Stored but never published, and the job ends without a word on the channel.
  state.stored.push(chunk(2));
  state.job.state = "succeeded";
  const started = Date.now();
  await reading;
  assert.deepEqual(seqs, [1, 2]);
  assert.ok(Date.now() - started < 10_000, "the follow ended within the recheck interval");
});

test("a follower that does not read while megabytes arrive gets every chunk once, in order, from the store", async () => {
  const state = { job: { state: "running" } as Partial<JobRecord>, stored: [] as LogChunkRecord[] };
  const { db, calls } = fakeDb(state);
  const events = createJobEvents(createMemoryLeaseStore());
  const reader = readLogs(db, events, { jobId, attempt: 0, fromSeq: 0, follow: true, signal: new AbortController().signal });
  const first = reader.next(); // subscribes, reads the (empty) store, then waits for chunks
  state.stored.push(chunk(1));
  await events.logs(jobId, [chunk(1)]);
  assert.equal((await first).value?.seq, 1);
  // 24 chunks of 1 MiB published while the follower is not reading: more than it may buffer.
  const readsBefore = calls.logReads;
  for (let seq = 2; seq <= 25; seq++) {
    const c = chunk(seq, 1024 * 1024);
    state.stored.push(c);
    await events.logs(jobId, [c]);
  }
  await new Promise((resolve) => setTimeout(resolve, 20));
  const second = await reader.next();
  assert.equal(second.value?.seq, 2);
  // Not kept in memory: the follower dropped what it had buffered and reads on from the store.
  assert.ok(calls.logReads > readsBefore, "what did not fit the buffer was read from the store");
  state.job.state = "succeeded";
  await events.changed(jobId, "succeeded");
  const seqs = [1, 2];
  for await (const c of reader) {
    seqs.push(c.seq);
    assert.equal(c.data.byteLength, 1024 * 1024);
  }
  assert.deepEqual(seqs, Array.from({ length: 25 }, (_, i) => i + 1));
});

// Chunks are published when the server receives them, before they are stored
// (agent-session.ts); the tests below publish first and store later.

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

test("live chunks reach a follower before they are stored", async () => {
  const state = { job: { state: "running" } as Partial<JobRecord>, stored: [] as LogChunkRecord[] };
  const { db } = fakeDb(state);
  const events = createJobEvents(createMemoryLeaseStore());
  const reader = readLogs(db, events, { jobId, attempt: 0, fromSeq: 0, follow: true, signal: new AbortController().signal });
  const first = reader.next();
  await tick(10);
  await events.logs(jobId, [chunk(1)]);
  assert.equal((await first).value?.seq, 1, "the chunk arrived live while the store held nothing");
  await events.logs(jobId, [chunk(2)]);
  assert.equal((await reader.next()).value?.seq, 2);
  state.stored.push(chunk(1), chunk(2));
  state.job.state = "succeeded";
  await events.changed(jobId, "succeeded");
  assert.equal((await reader.next()).done, true);
});

test("a follower that joins while chunks are published but not yet stored gets each chunk once, in order", async () => {
  const state = { job: { state: "running" } as Partial<JobRecord>, stored: [chunk(1), chunk(2)] };
  const { db, calls } = fakeDb(state);
  const events = createJobEvents(createMemoryLeaseStore());
  // Chunks 3 and 4 were published before the follower listened and are still being stored.
  await events.logs(jobId, [chunk(3)]);
  await events.logs(jobId, [chunk(4)]);
  const seqs: number[] = [];
  const reading = (async () => {
    for await (const c of readLogs(db, events, { jobId, attempt: 0, fromSeq: 0, follow: true, signal: new AbortController().signal })) seqs.push(c.seq);
  })();
  await tick(10);
  // Live from here: 5 and 6 arrive while 3 and 4 are missing.
  await events.logs(jobId, [chunk(5)]);
  await events.logs(jobId, [chunk(6)]);
  await tick(60);
  assert.deepEqual(seqs, [1, 2], "nothing past the hole is sent before the hole is filled");
  const readsWhileWaiting = calls.logReads;
  state.stored.push(chunk(3), chunk(4));
  await tick(300);
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6], "the hole came from the store and the live chunks after it from the buffer");
  assert.ok(calls.logReads - readsWhileWaiting <= 4, `the store was read ${calls.logReads - readsWhileWaiting} times once the hole was stored`);
  // Resends (the agent sends unacknowledged chunks again, e.g. after a reconnect) are dropped.
  await events.logs(jobId, [chunk(5)]);
  await events.logs(jobId, [chunk(6)]);
  await events.logs(jobId, [chunk(7)]);
  await tick(10);
  state.stored.push(chunk(5), chunk(6), chunk(7));
  state.job.state = "succeeded";
  await events.changed(jobId, "succeeded");
  await reading;
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7]);
});

test("a hole that is never stored (the attempt was lost) ends the follow at the hole, without a gap", async () => {
  const state = { job: { state: "running" } as Partial<JobRecord>, stored: [chunk(1)] };
  const { db } = fakeDb(state);
  const events = createJobEvents(createMemoryLeaseStore());
  await events.logs(jobId, [chunk(2)]); // published, never stored
  const seqs: number[] = [];
  const reading = (async () => {
    for await (const c of readLogs(db, events, { jobId, attempt: 1, fromSeq: 0, follow: true, signal: new AbortController().signal })) seqs.push(c.seq);
  })();
  await tick(10);
  await events.logs(jobId, [chunk(3)]);
  await tick(100);
  assert.deepEqual(seqs, [1]);
  // The lease expired: the job moves on to attempt 2.
  state.job.attempt = 2;
  await events.changed(jobId, "queued");
  await reading;
  assert.deepEqual(seqs, [1], "chunk 3 was not sent across the hole at 2");
});

test("a follower that gets a live chunk stored later does not get it twice", async () => {
  const state = { job: { state: "running" } as Partial<JobRecord>, stored: [] as LogChunkRecord[] };
  const { db } = fakeDb(state);
  const events = createJobEvents(createMemoryLeaseStore());
  const seqs: number[] = [];
  const reading = (async () => {
    for await (const c of readLogs(db, events, { jobId, attempt: 0, fromSeq: 0, follow: true, signal: new AbortController().signal })) seqs.push(c.seq);
  })();
  await tick(10);
  for (let seq = 1; seq <= 20; seq++) {
    await events.logs(jobId, [chunk(seq)]);
    // Stored a few chunks behind the live edge.
    if (seq > 3) state.stored.push(chunk(seq - 3));
    await tick(1);
  }
  state.stored.push(chunk(18), chunk(19), chunk(20));
  state.job.state = "succeeded";
  await events.changed(jobId, "succeeded");
  await reading;
  assert.deepEqual(seqs, Array.from({ length: 20 }, (_, i) => i + 1));
});
