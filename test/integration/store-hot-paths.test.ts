// The store's hot paths (raw SQL on the driver, mapped by hand) on both
// drivers: PostgreSQL (in its own schema, so a statement that missed the
// schema would find no table) and PGlite. The drivers hand back different JS
// types for some columns (bigint, bytea); the records must not differ.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import type { AttemptRecord, JobRecord, LogChunkRecord, WorkerRecord } from "../../src/domain.ts";
import { AlreadyExistsError, type Database, type NewJob } from "../../src/stores/database.ts";
import { openDatabase } from "../../src/stores/postgres/open-database.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";

let clock = Date.parse("2031-05-01T10:00:00.000Z");

function newJob(space: string, poolId: string, overrides: Partial<NewJob> = {}): NewJob {
  clock += 1000;
  return {
    id: randomUUID(),
    space,
    name: "build",
    script: "echo 'quoted' \\ \"double\"",
    env: { A: "1", EMPTY: "", JSONISH: '{"x":[1,2]}' },
    requestedPoolId: poolId,
    targetId: null,
    runId: "run-7",
    requiredLabels: ["linux", "with space", 'quote"d'],
    priority: 0,
    exclusive: false,
    timeoutMs: 3_000_000_000,
    queueTimeoutMs: 1234,
    maxAttempts: 2,
    resolvedPoolId: poolId,
    poolRule: "explicit",
    poolReason: "asked for it",
    queueDeadline: new Date(clock + 60_000),
    createdAt: new Date(clock + 0.123e3),
    ...overrides,
  };
}

function attemptRow(jobId: string, attempt: number, workerId: string, assignedAt: Date): AttemptRecord {
  return {
    jobId,
    attempt,
    workerId,
    state: "assigned",
    assignedAt,
    acceptedAt: null,
    endedAt: null,
    outcome: null,
    exitCode: null,
    lastSeq: 0,
  };
}

function assertDates(record: object, fields: string[]): void {
  for (const field of fields) {
    const value = (record as Record<string, unknown>)[field];
    assert.ok(value === null || value instanceof Date, `${field} is a Date or null, got ${typeof value}`);
  }
}

const drivers: { name: string; open(): Promise<{ db: Database; cleanup(): Promise<void> }> }[] = [
  {
    name: "postgresql",
    async open() {
      const t: TestDatabase = await createTestDatabase({ label: "hot" });
      return { db: t.db, cleanup: () => t.cleanup() };
    },
  },
  {
    name: "pglite",
    async open() {
      const db = await openDatabase({ dataDir: "memory://" });
      return { db, cleanup: () => db.close() };
    },
  },
];

for (const driver of drivers) {
  describe(`store hot paths on ${driver.name}`, () => {
    let db: Database;
    let cleanup: () => Promise<void>;
    let space: string;
    let poolId: string;
    let worker: WorkerRecord;
    let spaceCounter = 0;

    before(async () => {
      ({ db, cleanup } = await driver.open());
    });

    after(async () => {
      await cleanup?.();
    });

    async function freshPool(): Promise<void> {
      spaceCounter += 1;
      space = `hot-${spaceCounter}`;
      poolId = (await db.ensureSpace(space)).id;
      worker = await db.workers.create({
        space,
        poolId,
        name: `w-${spaceCounter}`,
        labels: ["linux", "gpu"],
        capacity: 4,
        credentialHash: `hash-${randomUUID()}`,
        hostname: "host",
        agentVersion: "1.0.0",
      });
    }

    test("jobs.create and get round-trip every field with its JS type", async () => {
      await freshPool();
      const input = newJob(space, poolId);
      const created = await db.jobs.create(input);
      const read = await db.jobs.get(input.id);
      assert.deepEqual(read, created);
      assert.ok(read);
      assert.equal(typeof read.timeoutMs, "number");
      assert.equal(read.timeoutMs, 3_000_000_000);
      assert.equal(read.queueTimeoutMs, 1234);
      assertDates(read, ["createdAt", "startedAt", "endedAt", "queueDeadline"]);
      assert.deepEqual(read.env, input.env);
      assert.deepEqual(read.requiredLabels, input.requiredLabels);

      const bare = newJob(space, poolId, { timeoutMs: null, queueTimeoutMs: null, queueDeadline: null, requiredLabels: [], env: {} });
      await db.jobs.create(bare);
      const bareRead = await db.jobs.get(bare.id);
      assert.equal(bareRead?.timeoutMs, null);
      assert.deepEqual(bareRead?.requiredLabels, []);
      assert.deepEqual(bareRead?.env, {});

      await assert.rejects(db.jobs.create(input), AlreadyExistsError);
      assert.equal(await db.jobs.get(randomUUID()), null);
      assert.equal(await db.jobs.get("not-a-uuid"), null);
    });

    test("transition: assign, accept, finish, each one statement with its attempt change", async () => {
      await freshPool();
      const job = await db.jobs.create(newJob(space, poolId));
      const assignedAt = new Date(clock + 5);
      const assigned = await db.jobs.transition(
        job.id,
        { states: ["queued"], attempt: 0 },
        { state: "assigned", attempt: 1, workerId: worker.id, workerReason: "picked", builtinWorker: false },
        { insert: attemptRow(job.id, 1, worker.id, assignedAt) },
      );
      assert.deepEqual(assigned, { ...job, state: "assigned", attempt: 1, workerId: worker.id, workerReason: "picked" });
      assert.deepEqual(await db.jobs.attempts(job.id), [attemptRow(job.id, 1, worker.id, assignedAt)]);
      assert.deepEqual(await db.jobs.liveAttemptsOfWorker(worker.id), [attemptRow(job.id, 1, worker.id, assignedAt)]);

      const startedAt = new Date(clock + 7);
      const running = await db.jobs.transition(
        job.id,
        { states: ["assigned"], attempt: 1, workerId: worker.id },
        { state: "running", startedAt },
        { update: { attempt: 1, patch: { state: "running", acceptedAt: startedAt } } },
      );
      assert.equal(running?.state, "running");
      assert.deepEqual(running?.startedAt, startedAt);

      const endedAt = new Date(clock + 9);
      const finished = await db.jobs.transition(
        job.id,
        { states: ["assigned", "running"], attempt: 1, workerId: worker.id },
        { state: "failed", exitCode: 3, failureReason: "exit_code", message: "exit 3", endedAt },
        { update: { attempt: 1, patch: { state: "ended", endedAt, outcome: "failed", exitCode: 3, lastSeq: 12 } } },
      );
      assert.deepEqual(finished, {
        ...job,
        state: "failed",
        attempt: 1,
        workerId: worker.id,
        workerReason: "picked",
        exitCode: 3,
        failureReason: "exit_code",
        message: "exit 3",
        startedAt,
        endedAt,
      });
      assert.deepEqual(await db.jobs.get(job.id), finished);
      assert.deepEqual(await db.jobs.attempts(job.id), [
        {
          ...attemptRow(job.id, 1, worker.id, assignedAt),
          state: "ended",
          acceptedAt: startedAt,
          endedAt,
          outcome: "failed",
          exitCode: 3,
          lastSeq: 12,
        },
      ]);
      assert.deepEqual(await db.jobs.liveAttemptsOfWorker(worker.id), []);

      // Null patches clear fields; undefined ones leave them.
      const cleared = await db.jobs.transition(job.id, { states: ["failed"] }, { exitCode: null, failureReason: null, message: undefined });
      assert.equal(cleared?.exitCode, null);
      assert.equal(cleared?.failureReason, null);
      assert.equal(cleared?.message, "exit 3");
    });

    test("a failed fence writes nothing, neither the job nor the attempt", async () => {
      await freshPool();
      const job = await db.jobs.create(newJob(space, poolId));
      const insert = { insert: attemptRow(job.id, 1, worker.id, new Date(clock)) };
      const patch = { state: "assigned" as const, attempt: 1, workerId: worker.id };
      assert.equal(await db.jobs.transition(job.id, { states: ["running"] }, patch, insert), null);
      assert.equal(await db.jobs.transition(job.id, { states: ["queued"], attempt: 5 }, patch, insert), null);
      assert.equal(await db.jobs.transition(job.id, { states: ["queued"], workerId: randomUUID() }, patch, insert), null);
      assert.equal(await db.jobs.transition(job.id, { states: ["queued"], workerId: "nope" }, patch, insert), null);
      assert.equal(await db.jobs.transition(randomUUID(), { states: ["queued"] }, patch, insert), null);
      assert.equal(await db.jobs.transition(job.id, { states: [] }, patch, insert), null);
      assert.deepEqual(await db.jobs.get(job.id), job);
      assert.deepEqual(await db.jobs.attempts(job.id), []);
    });

    test("a duplicate attempt insert fails and leaves the job as it was", async () => {
      await freshPool();
      const job = await db.jobs.create(newJob(space, poolId));
      const first = attemptRow(job.id, 1, worker.id, new Date(clock));
      await db.jobs.transition(job.id, { states: ["queued"] }, { workerReason: "first" }, { insert: first });
      await assert.rejects(
        db.jobs.transition(job.id, { states: ["queued"] }, { state: "assigned", attempt: 1 }, { insert: { ...first, workerId: randomUUID() } }),
        AlreadyExistsError,
      );
      const after_ = await db.jobs.get(job.id);
      assert.equal(after_?.state, "queued");
      assert.equal(after_?.workerReason, "first");
      assert.deepEqual(await db.jobs.attempts(job.id), [first]);
    });

    test("an attempt change with an empty patch is fenced by the job row; insert and update of one attempt merge", async () => {
      await freshPool();
      const job = await db.jobs.create(newJob(space, poolId));
      const at = new Date(clock);
      assert.equal(await db.jobs.transition(job.id, { states: ["running"] }, {}, { insert: attemptRow(job.id, 1, worker.id, at) }), null);
      assert.deepEqual(await db.jobs.attempts(job.id), []);
      assert.deepEqual(
        await db.jobs.transition(job.id, { states: ["queued"] }, {}, {
          insert: attemptRow(job.id, 1, worker.id, at),
          update: { attempt: 1, patch: { lastSeq: 4, state: "running" } },
        }),
        job,
      );
      assert.deepEqual(await db.jobs.attempts(job.id), [{ ...attemptRow(job.id, 1, worker.id, at), lastSeq: 4, state: "running" }]);
      assert.deepEqual(await db.jobs.transition(job.id, { states: ["queued"] }, {}, { update: { attempt: 1, patch: { lastSeq: 9 } } }), job);
      assert.equal((await db.jobs.attempts(job.id))[0].lastSeq, 9);
      assert.equal((await db.jobs.liveAttempts()).some((a) => a.jobId === job.id), true);
    });

    // Calls made in one turn share one statement (job-batches.ts); what each
    // caller sees must be what it would see on its own.
    test("transitions made together: each job fenced on its own, attempts written only for the jobs that moved", async () => {
      await freshPool();
      const created = await Promise.all(Array.from({ length: 6 }, () => db.jobs.create(newJob(space, poolId))));
      for (const job of created) assert.deepEqual(await db.jobs.get(job.id), job);
      const at = new Date(clock + 3);
      // Jobs 1 and 4 are fenced on an attempt they are not at: they must not move.
      const results = await Promise.all(
        created.map((job, n) =>
          db.jobs.transition(
            job.id,
            { states: ["queued"], attempt: n === 1 || n === 4 ? 7 : 0 },
            { state: "assigned", attempt: 1, workerId: worker.id, workerReason: `pick ${n}`, builtinWorker: false },
            { insert: attemptRow(job.id, 1, worker.id, at) },
          ),
        ),
      );
      for (const [n, job] of created.entries()) {
        if (n === 1 || n === 4) {
          assert.equal(results[n], null, `job ${n} was fenced out`);
          assert.deepEqual(await db.jobs.get(job.id), job);
          assert.deepEqual(await db.jobs.attempts(job.id), []);
        } else {
          const expected = { ...job, state: "assigned", attempt: 1, workerId: worker.id, workerReason: `pick ${n}` };
          assert.deepEqual(results[n], expected);
          assert.deepEqual(await db.jobs.get(job.id), expected);
          assert.deepEqual(await db.jobs.attempts(job.id), [attemptRow(job.id, 1, worker.id, at)]);
        }
      }
      // Accept and finish several together, with different values per job.
      const moved = created.filter((_, n) => n !== 1 && n !== 4);
      const accepted = await Promise.all(
        moved.map((job, n) =>
          db.jobs.transition(
            job.id,
            { states: ["assigned"], attempt: 1, workerId: worker.id },
            { state: "running", startedAt: new Date(clock + 10 + n) },
            { update: { attempt: 1, patch: { state: "running", acceptedAt: new Date(clock + 10 + n) } } },
          ),
        ),
      );
      assert.deepEqual(accepted.map((job) => job?.startedAt), moved.map((_, n) => new Date(clock + 10 + n)));
      const finished = await Promise.all(
        moved.map((job, n) =>
          db.jobs.transition(
            job.id,
            { states: ["assigned", "running"], attempt: 1, workerId: worker.id },
            { state: n % 2 === 0 ? "succeeded" : "failed", exitCode: n, endedAt: new Date(clock + 20) },
            { update: { attempt: 1, patch: { state: "ended", outcome: n % 2 === 0 ? "succeeded" : "failed", exitCode: n, lastSeq: n } } },
          ),
        ),
      );
      for (const [n, job] of moved.entries()) {
        assert.equal(finished[n]?.state, n % 2 === 0 ? "succeeded" : "failed");
        assert.equal(finished[n]?.exitCode, n);
        const [attempt] = await db.jobs.attempts(job.id);
        assert.deepEqual([attempt?.state, attempt?.exitCode, attempt?.lastSeq, attempt?.acceptedAt], ["ended", n, n, new Date(clock + 10 + n)]);
      }
    });

    test("the same job moved twice in one turn: the second sees the first, exactly one attempt is written", async () => {
      await freshPool();
      const job = await db.jobs.create(newJob(space, poolId));
      const assign = () =>
        db.jobs.transition(
          job.id,
          { states: ["queued"], attempt: 0 },
          { state: "assigned", attempt: 1, workerId: worker.id },
          { insert: attemptRow(job.id, 1, worker.id, new Date(clock)) },
        );
      const [first, second] = await Promise.all([assign(), assign()]);
      assert.equal([first, second].filter((result) => result !== null).length, 1);
      assert.equal((await db.jobs.attempts(job.id)).length, 1);
    });

    // What an agent sends for a job that ends at once: its acceptance, then its finish.
    const accept = (jobId: string, at: Date) =>
      db.jobs.transition(
        jobId,
        { states: ["assigned"], attempt: 1, workerId: worker.id },
        { state: "running", startedAt: at },
        { update: { attempt: 1, patch: { state: "running", acceptedAt: at } } },
      );
    const finish = (jobId: string, at: Date) =>
      db.jobs.transition(
        jobId,
        { states: ["assigned", "running"], attempt: 1, workerId: worker.id },
        { state: "succeeded", exitCode: 0, endedAt: at },
        { update: { attempt: 1, patch: { state: "ended", endedAt: at, outcome: "succeeded", exitCode: 0 } } },
      );
    const assignedJob = async () => {
      const job = await db.jobs.create(newJob(space, poolId));
      await db.jobs.transition(job.id, { states: ["queued"], attempt: 0 }, { state: "assigned", attempt: 1, workerId: worker.id }, {
        insert: attemptRow(job.id, 1, worker.id, new Date(clock)),
      });
      return job;
    };

    test("an acceptance and a finish asked for in one turn are written as one change: both callers get the ended job", async () => {
      await freshPool();
      const job = await assignedJob();
      const [accepted, finished] = await Promise.all([accept(job.id, new Date(clock + 10)), finish(job.id, new Date(clock + 20))]);
      // Written apart, the acceptance's caller would get the job running.
      assert.equal(accepted?.state, "succeeded");
      assert.deepEqual(accepted, finished);
      assert.deepEqual([finished?.startedAt, finished?.endedAt, finished?.exitCode], [new Date(clock + 10), new Date(clock + 20), 0]);
      const [attempt] = await db.jobs.attempts(job.id);
      assert.deepEqual(
        [attempt?.state, attempt?.acceptedAt, attempt?.endedAt, attempt?.outcome],
        ["ended", new Date(clock + 10), new Date(clock + 20), "succeeded"],
      );
    });

    test("composed transitions whose first fence fails are written one by one: each caller gets its own answer", async () => {
      await freshPool();
      const job = await assignedJob();
      // Already running (an acceptance sent again after a reconnect): the acceptance fails, the finish does not.
      assert.equal((await accept(job.id, new Date(clock + 10)))?.state, "running");
      const [accepted, finished] = await Promise.all([accept(job.id, new Date(clock + 15)), finish(job.id, new Date(clock + 20))]);
      assert.equal(accepted, null);
      assert.equal(finished?.state, "succeeded");
      assert.deepEqual(finished?.startedAt, new Date(clock + 10));
    });

    test("a transition asked for while the job's previous one is being written waits for it, and sees what it wrote", async () => {
      await freshPool();
      const job = await assignedJob();
      const accepting = accept(job.id, new Date(clock + 10));
      // The acceptance's statement has gone out (batches are written on the next turn).
      await new Promise((resolve) => setImmediate(resolve));
      // Its fence allows only a running job: written beside the acceptance, it would find the job still assigned.
      const noting = db.jobs.transition(job.id, { states: ["running"], attempt: 1, workerId: worker.id }, { message: "seen running" });
      const finishing = finish(job.id, new Date(clock + 20));
      const [accepted, noted, finished] = await Promise.all([accepting, noting, finishing]);
      assert.equal(accepted?.state, "running");
      assert.equal(noted?.message, "seen running", "asked for after the acceptance, it found the job running");
      assert.deepEqual([finished?.state, finished?.message], ["succeeded", "seen running"]);
    });

    test("one bad item among several fails alone: its caller gets the error, the others are written", async () => {
      await freshPool();
      const [a, b, c] = await Promise.all([1, 2, 3].map(() => db.jobs.create(newJob(space, poolId))));
      // b already has an attempt 1 but is back at attempt 0: inserting attempt 1 again is a duplicate.
      await db.jobs.transition(b.id, { states: ["queued"] }, {}, { insert: attemptRow(b.id, 1, worker.id, new Date(clock)) });
      const results = await Promise.allSettled(
        [a, b, c].map((job) =>
          db.jobs.transition(job.id, { states: ["queued"], attempt: 0 }, { state: "assigned", attempt: 1, workerId: worker.id }, {
            insert: attemptRow(job.id, 1, worker.id, new Date(clock + 1)),
          }),
        ),
      );
      assert.equal(results[0].status, "fulfilled");
      assert.equal(results[1].status, "rejected");
      assert.ok(results[1].status === "rejected" && results[1].reason instanceof AlreadyExistsError);
      assert.equal(results[2].status, "fulfilled");
      assert.equal((await db.jobs.get(a.id))?.state, "assigned");
      assert.equal((await db.jobs.get(b.id))?.state, "queued");
      assert.equal((await db.jobs.get(c.id))?.state, "assigned");
    });

    test("jobs created together round-trip every field; a duplicate among them fails alone", async () => {
      await freshPool();
      const inputs = [
        newJob(space, poolId),
        newJob(space, poolId, { timeoutMs: null, queueTimeoutMs: null, queueDeadline: null, requiredLabels: [], env: {}, targetId: null }),
        newJob(space, poolId, { priority: -3, exclusive: true, runId: "", requiredLabels: ["ünï", "a,b", "{x}"] }),
      ];
      const created = await Promise.all(inputs.map((input) => db.jobs.create(input)));
      for (const [n, input] of inputs.entries()) {
        const read = await db.jobs.get(input.id);
        assert.deepEqual(read, created[n]);
        assert.deepEqual(read?.env, input.env);
        assert.deepEqual(read?.requiredLabels, input.requiredLabels);
        assert.equal(read?.timeoutMs, input.timeoutMs);
        assertDates(read ?? {}, ["createdAt", "startedAt", "endedAt", "queueDeadline"]);
      }
      const fresh = newJob(space, poolId);
      const results = await Promise.allSettled([db.jobs.create(fresh), db.jobs.create(inputs[0]), db.jobs.create(newJob(space, poolId))]);
      assert.equal(results[0].status, "fulfilled");
      assert.ok(results[1].status === "rejected" && results[1].reason instanceof AlreadyExistsError);
      assert.equal(results[2].status, "fulfilled");
      assert.deepEqual(await db.jobs.get(fresh.id), results[0].status === "fulfilled" ? results[0].value : null);
    });

    test("a job inserted already placed brings its attempt in the same statement; queued and placed inserts mix", async () => {
      await freshPool();
      const at = new Date(clock + 1);
      const inputs = [newJob(space, poolId), newJob(space, poolId), newJob(space, poolId)];
      const placed = { state: "assigned" as const, attempt: 1, workerId: worker.id, workerReason: "picked at submit", builtinWorker: false };
      const [first, second, third] = await Promise.all([
        db.jobs.create(inputs[0], { patch: placed, attempt: attemptRow(inputs[0].id, 1, worker.id, at) }),
        db.jobs.create(inputs[1]),
        db.jobs.create(inputs[2], { patch: { state: "failed", failureReason: "no_healthy_worker", message: "none", endedAt: at } }),
      ]);
      assert.deepEqual(await db.jobs.get(inputs[0].id), first);
      assert.equal(first.state, "assigned");
      assert.equal(first.workerReason, "picked at submit");
      assert.deepEqual(await db.jobs.attempts(inputs[0].id), [attemptRow(inputs[0].id, 1, worker.id, at)]);
      assert.equal(second.state, "queued");
      assert.deepEqual(await db.jobs.attempts(inputs[1].id), []);
      assert.deepEqual(await db.jobs.get(inputs[2].id), third);
      assert.equal(third.failureReason, "no_healthy_worker");
      // A placed insert of an id that exists fails whole: no second job, no stray attempt.
      await assert.rejects(
        db.jobs.create(inputs[1], { patch: placed, attempt: attemptRow(inputs[1].id, 1, worker.id, at) }),
        AlreadyExistsError,
      );
      assert.equal((await db.jobs.get(inputs[1].id))?.state, "queued");
      assert.deepEqual(await db.jobs.attempts(inputs[1].id), []);
    });

    test("queued pages in placement order with `after`; queueDepth and queueStats agree", async () => {
      await freshPool();
      const same = new Date(clock + 50_000);
      const ids = [randomUUID(), randomUUID()].sort();
      const jobs: JobRecord[] = [];
      jobs.push(await db.jobs.create(newJob(space, poolId, { priority: 0 })));
      jobs.push(await db.jobs.create(newJob(space, poolId, { priority: 5 })));
      jobs.push(await db.jobs.create(newJob(space, poolId, { priority: 0, createdAt: same, id: ids[1] })));
      jobs.push(await db.jobs.create(newJob(space, poolId, { priority: 0, createdAt: same, id: ids[0] })));
      jobs.push(await db.jobs.create(newJob(space, poolId, { priority: -1 })));
      const order = [jobs[1], jobs[0], jobs[3], jobs[2], jobs[4]];

      assert.deepEqual(await db.jobs.queued(poolId, 10), order);
      assert.deepEqual(await db.jobs.queued(poolId, 2), order.slice(0, 2));
      for (let i = 0; i < order.length; i++) {
        assert.deepEqual(await db.jobs.queued(poolId, 10, order[i]), order.slice(i + 1), `after #${i}`);
        assert.equal(await db.jobs.queueDepth(poolId, order[i]), i, `depth of #${i}`);
      }
      assert.equal(await db.jobs.queueDepth(poolId), 5);
      const stats = await db.jobs.queueStats(poolId);
      assert.equal(stats.queued, 5);
      assert.ok(stats.oldestQueuedAt instanceof Date);
      assert.deepEqual(stats.oldestQueuedAt, jobs[0].createdAt);
      assert.deepEqual(await db.jobs.queueStats(randomUUID()), { queued: 0, oldestQueuedAt: null });
      assert.ok((await db.jobs.poolsWithQueuedJobs()).includes(poolId));
      const expired = await db.jobs.queueExpired(new Date(jobs[1].queueDeadline!.getTime() + 1), 100);
      assert.deepEqual(
        expired.filter((j) => j.space === space).map((j) => j.id),
        [jobs[0].id, jobs[1].id],
      );
      const listed = await db.jobs.list({ space, poolId }, { limit: 2 });
      assert.equal(listed.length, 2);
      const next = await db.jobs.list({ space, poolId }, { limit: 10, after: listed[1].id });
      assert.equal(listed.length + next.length, 5);
    });

    test("logs: append skips duplicates, bytes and times round-trip, maxSeq", async () => {
      await freshPool();
      const jobId = randomUUID();
      const backing = new Uint8Array([9, 9, 0, 1, 2, 255, 0, 9]);
      const chunks: LogChunkRecord[] = [
        { jobId, attempt: 1, seq: 1, stream: "stdout", data: backing.subarray(2, 6), time: new Date(clock + 1) },
        { jobId, attempt: 1, seq: 2, stream: "stderr", data: Buffer.from("héllo\n"), time: new Date(clock + 2) },
        { jobId, attempt: 1, seq: 3, stream: "system", data: new Uint8Array(0), time: new Date(clock + 3) },
      ];
      assert.equal(await db.logs.append(chunks), 3);
      assert.equal(await db.logs.append([chunks[1], { ...chunks[2], seq: 4 }]), 1);
      assert.equal(await db.logs.append([]), 0);
      const read = await db.logs.read(jobId, 1, 0, 10);
      assert.equal(read.length, 4);
      for (const [i, record] of read.entries()) {
        assert.ok(record.data instanceof Uint8Array);
        assert.ok(!Buffer.isBuffer(record.data), "a plain Uint8Array, not a Buffer");
        assert.ok(record.time instanceof Date);
        const expected = i < 3 ? chunks[i] : { ...chunks[2], seq: 4 };
        assert.deepEqual([...record.data], [...expected.data]);
        assert.deepEqual({ ...record, data: null }, { ...expected, data: null });
      }
      assert.deepEqual((await db.logs.read(jobId, 1, 2, 2)).map((c) => c.seq), [2, 3]);
      assert.equal(await db.logs.maxSeq(jobId, 1), 4);
      assert.equal(await db.logs.maxSeq(jobId, 2), 0);
      assert.deepEqual(await db.logs.read(jobId, 2, 0, 10), []);

      const many: LogChunkRecord[] = [];
      for (let seq = 1; seq <= 2500; seq++) {
        many.push({ jobId, attempt: 3, seq, stream: "stdout", data: Buffer.from(`line ${seq}\n`), time: new Date(clock) });
      }
      assert.equal(await db.logs.append(many), 2500);
      assert.equal(await db.logs.append(many.slice(1000, 1700)), 0);
      assert.equal(await db.logs.maxSeq(jobId, 3), 2500);
      assert.equal(new TextDecoder().decode((await db.logs.read(jobId, 3, 2500, 1))[0].data), "line 2500\n");
    });

    test("logs: appends made at once are stored together, each caller told its own count; a bad batch fails alone", async () => {
      await freshPool();
      const jobs = Array.from({ length: 12 }, () => randomUUID());
      const rec = (jobId: string, seq: number): LogChunkRecord => ({
        jobId,
        attempt: 1,
        seq,
        stream: "stdout",
        data: Buffer.from(`${jobId} ${seq}\n`),
        time: new Date(clock),
      });
      // One chunk of the first job is stored already: its caller's count leaves it out.
      assert.equal(await db.logs.append([rec(jobs[0], 1)]), 1);
      const results = await Promise.allSettled([
        ...jobs.map((jobId) => db.logs.append([rec(jobId, 1), rec(jobId, 2), rec(jobId, 3)])),
        db.logs.append([rec("not-a-uuid", 1)]),
      ]);
      assert.deepEqual(
        results.slice(0, jobs.length).map((r) => (r.status === "fulfilled" ? r.value : String(r.reason))),
        jobs.map((_, i) => (i === 0 ? 2 : 3)),
      );
      assert.equal(results[jobs.length].status, "rejected", "the batch with a bad job id fails");
      for (const jobId of jobs) {
        assert.deepEqual((await db.logs.read(jobId, 1, 0, 10)).map((c) => new TextDecoder().decode(c.data)), [1, 2, 3].map((seq) => `${jobId} ${seq}\n`));
      }
    });

    test("workers: get and byCredentialHash map every field", async () => {
      await freshPool();
      const hash = `hash-${randomUUID()}`;
      const created = await db.workers.create({
        space,
        poolId,
        name: "by-hash",
        labels: ["a b", "c"],
        capacity: 2,
        credentialHash: hash,
        hostname: "h",
        agentVersion: "2",
      });
      assert.deepEqual(await db.workers.get(created.id), created);
      assert.deepEqual(await db.workers.byCredentialHash(hash), created);
      assert.equal(await db.workers.byCredentialHash("missing"), null);
      assert.equal(await db.workers.get(randomUUID()), null);
      assert.equal(await db.workers.get("x"), null);
      const seen = new Date(clock + 77);
      const hello = await db.workers.recordHello(created.id, { labels: [], capacity: 3, hostname: "h2", agentVersion: "3" }, seen);
      const got = await db.workers.get(created.id);
      assert.deepEqual(got, hello);
      assert.ok(got?.lastSeenAt instanceof Date);
      assert.deepEqual(got?.lastSeenAt, seen);
      assert.ok(got?.createdAt instanceof Date);
    });
  });
}
