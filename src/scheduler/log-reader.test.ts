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
