// The lease/health store contract (src/stores/lease-store.ts), run against
// every implementation: memory-lease-store.test.ts and
// test/integration/redis-lease-store.test.ts call leaseStoreContract.
// Freshness and expiry use real clocks, so those tests sleep on short TTLs.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  blocksTheQueue,
  LeaseHeldError,
  MAX_WORKER_CAPACITY,
  type AcquireRequest,
  type AcquireResult,
  type LeaseStore,
  type PlacementWorker,
} from "../../src/stores/lease-store.ts";

export type MakeLeaseStore = () => Promise<{ store: LeaseStore; cleanup: () => Promise<void> }>;

const POOL = "pool-a";
const REPLICA = "replica-1";
const SESSION = "session-1";
const HEARTBEAT_TTL_MS = 10_000;
const LEASE_TTL_MS = 10_000;
const SHORT_TTL_MS = 150;

function worker(workerId: string, overrides: Partial<PlacementWorker> = {}): PlacementWorker {
  return { workerId, poolId: POOL, capacity: 5, labels: [], acceptsWork: true, ...overrides };
}

function job(jobId: string, overrides: Partial<AcquireRequest> = {}): AcquireRequest {
  return {
    poolId: POOL,
    jobId,
    attempt: 1,
    runId: "",
    requiredLabels: [],
    exclusive: false,
    leaseTtlMs: LEASE_TTL_MS,
    ...overrides,
  };
}

function placed(result: AcquireResult): Extract<AcquireResult, { ok: true }> {
  assert.ok(result.ok, `expected a placement, got ${JSON.stringify(result)}`);
  return result;
}

async function attachAll(store: LeaseStore, workers: PlacementWorker[], heartbeatTtlMs = HEARTBEAT_TTL_MS) {
  for (const w of workers) await store.attach(w, SESSION, REPLICA, heartbeatTtlMs);
}

async function leaseCounts(store: LeaseStore, workerIds: string[]): Promise<Record<string, number>> {
  const statuses = await store.workerStatus(workerIds);
  return Object.fromEntries(workerIds.map((id) => [id, statuses.get(id)!.activeLeases]));
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

export function leaseStoreContract(name: string, make: MakeLeaseStore): void {
  const withStore = (fn: (store: LeaseStore) => Promise<void>) => async () => {
    const { store, cleanup } = await make();
    try {
      await fn(store);
    } finally {
      await cleanup();
    }
  };

  describe(`${name} lease store`, () => {
    describe("placement", () => {
      test(
        "places each job on the worker with the fewest active leases",
        withStore(async (store) => {
          await attachAll(store, [worker("a"), worker("b"), worker("c")]);
          const first = [];
          for (const id of ["j1", "j2", "j3"]) first.push(placed(await store.acquire(job(id))).workerId);
          assert.deepEqual([...first].sort(), ["a", "b", "c"]);

          const bJob = ["j1", "j2", "j3"][first.indexOf("b")];
          assert.equal(await store.release(bJob, 1), true);
          const next = placed(await store.acquire(job("j4")));
          assert.equal(next.workerId, "b");
          assert.equal(next.tieBreak, "fewest_leases");
          assert.equal(next.leasesBefore, 0);
          assert.equal(next.eligible, 3);
        }),
      );

      test(
        "breaks ties by the same run, then by least recently leased",
        withStore(async (store) => {
          await attachAll(store, [worker("a"), worker("b"), worker("c")]);
          // Never leased counts as least recent; among those, by worker id.
          assert.deepEqual(placed(await store.acquire(job("j1"))), {
            ok: true,
            workerId: "a",
            leasesBefore: 0,
            eligible: 3,
            tieBreak: "least_recently_leased",
          });
          assert.equal(placed(await store.acquire(job("j2"))).workerId, "b");
          assert.equal(placed(await store.acquire(job("j3"))).tieBreak, "fewest_leases");
          for (const id of ["j1", "j2", "j3"]) await store.release(id, 1);

          // All idle; least recently leased order is now a, b, c.
          const runFirst = placed(await store.acquire(job("j4", { runId: "run-1" })));
          assert.equal(runFirst.workerId, "a");
          assert.equal(runFirst.tieBreak, "least_recently_leased");
          await store.release("j4", 1);

          // Order is b, c, a, but a served run-1.
          const sameRun = placed(await store.acquire(job("j5", { runId: "run-1" })));
          assert.equal(sameRun.workerId, "a");
          assert.equal(sameRun.tieBreak, "same_run");
          const otherRun = placed(await store.acquire(job("j6", { runId: "run-2" })));
          assert.equal(otherRun.workerId, "b");
          assert.equal(otherRun.tieBreak, "least_recently_leased");

          // Fewer leases beat the run: a and b hold one each, c none.
          const fewer = placed(await store.acquire(job("j7", { runId: "run-1" })));
          assert.equal(fewer.workerId, "c");
          assert.equal(fewer.tieBreak, "fewest_leases");
        }),
      );

      test(
        "never places more leases on a worker than its capacity",
        withStore(async (store) => {
          await attachAll(store, [worker("a", { capacity: 2 }), worker("b", { capacity: 1 })]);
          for (const id of ["j1", "j2", "j3"]) placed(await store.acquire(job(id)));
          assert.deepEqual(await store.acquire(job("j4")), { ok: false, code: "all_busy", healthy: 2, matching: 2 });
          assert.deepEqual(await leaseCounts(store, ["a", "b"]), { a: 2, b: 1 });
        }),
      );

      test(
        "tells no healthy worker apart from all busy, with counts",
        withStore(async (store) => {
          const none = { ok: false, code: "no_healthy_worker" };
          assert.deepEqual(await store.acquire(job("j0")), { ...none, healthy: 0, matching: 0 });

          await attachAll(store, [
            worker("a", { capacity: 1, labels: ["linux"] }),
            worker("b", { labels: ["linux"], acceptsWork: false }),
            worker("c", { labels: ["linux"] }),
          ]);
          await store.detach("c", SESSION);
          assert.deepEqual(await store.acquire(job("j1", { requiredLabels: ["windows"] })), {
            ...none,
            healthy: 1,
            matching: 0,
          });
          placed(await store.acquire(job("j2", { requiredLabels: ["linux"] })));
          assert.deepEqual(await store.acquire(job("j3", { requiredLabels: ["linux"] })), {
            ok: false,
            code: "all_busy",
            healthy: 1,
            matching: 1,
          });
        }),
      );

      test(
        "places only on workers carrying every required label",
        withStore(async (store) => {
          await attachAll(store, [
            worker("a", { labels: ["linux"] }),
            worker("b", { labels: ["linux", "gpu"] }),
            worker("c", { labels: ["gpu"] }),
          ]);
          for (const id of ["j1", "j2"]) {
            const result = placed(await store.acquire(job(id, { requiredLabels: ["gpu", "linux"] })));
            assert.equal(result.workerId, "b");
            assert.equal(result.eligible, 1);
          }
          const gpu = placed(await store.acquire(job("j3", { requiredLabels: ["gpu"] })));
          assert.equal(gpu.workerId, "c");
          assert.equal(gpu.eligible, 2);
          assert.equal(placed(await store.acquire(job("j4"))).workerId, "a");
        }),
      );

      test(
        "finds labeled workers behind many workers that lack the label",
        withStore(async (store) => {
          const plain = Array.from({ length: 80 }, (_, i) => worker(`a${String(i).padStart(2, "0")}`));
          await attachAll(store, [...plain, ...["z1", "z2", "z3"].map((id) => worker(id, { labels: ["gpu"] }))]);
          const placements = [];
          for (const id of ["j1", "j2", "j3", "j4"]) {
            placements.push(placed(await store.acquire(job(id, { requiredLabels: ["gpu"] }))));
          }
          assert.deepEqual(
            placements.map((p) => [p.workerId, p.leasesBefore, p.eligible, p.tieBreak]),
            [
              ["z1", 0, 3, "least_recently_leased"],
              ["z2", 0, 3, "least_recently_leased"],
              ["z3", 0, 3, "fewest_leases"],
              ["z1", 1, 3, "least_recently_leased"],
            ],
          );
          assert.deepEqual(await store.acquire(job("x1", { requiredLabels: ["gpu"], exclusive: true })), {
            ok: false,
            code: "all_busy",
            healthy: 83,
            matching: 3,
          });
          const exclusive = placed(await store.acquire(job("x2", { exclusive: true })));
          assert.equal(exclusive.workerId, "a00");
          assert.equal(exclusive.eligible, 80);
        }),
      );

      test(
        "an exclusive job takes only an idle worker and keeps it to itself",
        withStore(async (store) => {
          await attachAll(store, [worker("a", { capacity: 3 }), worker("b", { capacity: 3 })]);
          assert.equal(placed(await store.acquire(job("j1"))).workerId, "a");
          const exclusive = placed(await store.acquire(job("x1", { exclusive: true })));
          assert.equal(exclusive.workerId, "b");
          assert.equal(exclusive.eligible, 1);

          // b holds an exclusive lease: everything else goes to a until a is full.
          assert.equal(placed(await store.acquire(job("j2"))).workerId, "a");
          assert.equal(placed(await store.acquire(job("j3"))).workerId, "a");
          const busy = { ok: false, code: "all_busy", healthy: 2, matching: 2 };
          assert.deepEqual(await store.acquire(job("j4")), busy);
          // And an exclusive job waits for an idle worker.
          await store.release("j3", 1);
          assert.deepEqual(await store.acquire(job("x2", { exclusive: true })), busy);

          await store.release("x1", 1);
          assert.equal(placed(await store.acquire(job("j5"))).workerId, "b");
          assert.deepEqual(await leaseCounts(store, ["a", "b"]), { a: 2, b: 1 });
        }),
      );

      test(
        "a worker whose heartbeat went stale is not chosen until it beats again",
        withStore(async (store) => {
          await attachAll(store, [worker("a"), worker("b")], SHORT_TTL_MS);
          // b's heartbeat stretches its own TTL; a's 150 ms run out.
          assert.equal(await store.heartbeat("b", SESSION, HEARTBEAT_TTL_MS, LEASE_TTL_MS), true);
          await sleep(SHORT_TTL_MS + 30);
          const statuses = await store.workerStatus(["a", "b"]);
          assert.equal(statuses.get("a")!.fresh, false);
          assert.equal(statuses.get("a")!.attached, true);
          assert.equal(statuses.get("b")!.fresh, true);
          for (const id of ["j1", "j2"]) assert.equal(placed(await store.acquire(job(id))).workerId, "b");

          assert.equal(await store.heartbeat("b", SESSION, SHORT_TTL_MS, LEASE_TTL_MS), true);
          await sleep(SHORT_TTL_MS + 30);
          assert.deepEqual(await store.acquire(job("j3")), {
            ok: false,
            code: "no_healthy_worker",
            healthy: 0,
            matching: 0,
          });
          assert.equal(await store.heartbeat("a", SESSION, SHORT_TTL_MS, LEASE_TTL_MS), true);
          assert.equal(placed(await store.acquire(job("j3"))).workerId, "a");
        }),
      );
    });

    describe("placing a page at once (acquireMany)", () => {
      test(
        "decides a page in order, as acquire would one by one, and stops at the first plain job without room",
        withStore(async (store) => {
          await attachAll(store, [worker("a", { capacity: 2 }), worker("b", { capacity: 1, labels: ["gpu"] })]);
          const page = [
            job("j1"),
            job("j2", { requiredLabels: ["arm"] }), // no worker carries it: waits, does not stop the page
            job("j3"),
            job("j4", { exclusive: true }), // no idle worker left: waits, does not stop the page
            job("j5"),
            job("j6"), // a plain job with no room: the page stops here
            job("j7", { requiredLabels: ["gpu"] }), // never decided, though b has room
          ];
          const results = await store.acquireMany(page);
          assert.equal(results.length, 6);
          const [r1, r2, r3, r4, r5, r6] = results;
          assert.ok(r1 !== "held" && r3 !== "held" && r5 !== "held");
          // Fewest leases first: a, b, then a again; a and b are then full.
          assert.deepEqual([placed(r1).workerId, placed(r3).workerId, placed(r5).workerId], ["a", "b", "a"]);
          assert.deepEqual(r2, { ok: false, code: "no_healthy_worker", healthy: 2, matching: 0 });
          assert.deepEqual(r4, { ok: false, code: "all_busy", healthy: 2, matching: 2 });
          assert.deepEqual(r6, { ok: false, code: "all_busy", healthy: 2, matching: 2 });
          assert.deepEqual(await leaseCounts(store, ["a", "b"]), { a: 2, b: 1 });
          assert.equal(await store.lease("j7", 1), null);
        }),
      );

      test(
        "an attempt already leased answers held and the rest of the page is still decided",
        withStore(async (store) => {
          await attachAll(store, [worker("a"), worker("b")]);
          const first = placed(await store.acquire(job("j1")));
          const results = await store.acquireMany([job("j1"), job("j2", { runId: "r" }), job("j3")]);
          assert.equal(results[0], "held");
          assert.equal(results.length, 3);
          assert.deepEqual(await store.lease("j1", 1), { jobId: "j1", attempt: 1, workerId: first.workerId });
          const total = Object.values(await leaseCounts(store, ["a", "b"])).reduce((x, y) => x + y, 0);
          assert.equal(total, 3);
          assert.deepEqual(await store.acquireMany([]), []);
          await assert.rejects(store.acquireMany([job("x"), job("y", { poolId: "other" })]), RangeError);
        }),
      );
    });

    describe("a page decides what acquire decides one by one", () => {
      // Two stores given the same history: one decides each page with
      // acquireMany, the other with acquire one request at a time (stopping
      // where acquireMany stops). Answers, lease holders and counts must match.
      const LABELS = ["linux", "gpu", "arm"];
      for (const seed of [1, 2, 3, 4, 5]) {
        test(`random pages, seed ${seed}`, async () => {
          let state = seed * 7919;
          const random = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
          const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!;
          const [paged, single] = [await make(), await make()];
          try {
            const workers = Array.from({ length: 8 }, (_, i) =>
              worker(`w${i}`, { capacity: 1 + Math.floor(random() * 3), labels: LABELS.filter(() => random() < 0.4) }),
            );
            for (const { store } of [paged, single]) await attachAll(store, workers);
            const taken: AcquireRequest[] = [];
            let next = 0;
            for (let round = 0; round < 6; round++) {
              const page: AcquireRequest[] = [];
              for (let n = 0; n < 12; n++) {
                const roll = random();
                if (roll < 0.08 && taken.length > 0) page.push(pick(taken)); // already held
                else if (roll < 0.12 && page.length > 0) page.push(page[page.length - 1]!); // twice in the page
                else {
                  page.push(
                    job(`j${next++}`, {
                      runId: pick(["", "", "r1", "r2"]),
                      requiredLabels: random() < 0.3 ? LABELS.filter(() => random() < 0.4) : [],
                      exclusive: random() < 0.1,
                    }),
                  );
                }
              }
              const pagedResults = await paged.store.acquireMany(page);
              const singleResults: Array<AcquireResult | "held"> = [];
              for (const request of page) {
                let result: AcquireResult | "held";
                try {
                  result = await single.store.acquire(request);
                } catch (error) {
                  if (!(error instanceof LeaseHeldError)) throw error;
                  result = "held";
                }
                singleResults.push(result);
                if (blocksTheQueue(request, result)) break;
              }
              assert.deepEqual(pagedResults, singleResults, `round ${round}`);
              page.forEach((request, i) => {
                const result = pagedResults[i];
                if (result !== undefined && result !== "held" && result.ok) taken.push(request);
              });
              // Free some room for the next page, the same on both.
              for (const request of [...taken]) {
                if (random() < 0.35) {
                  for (const { store } of [paged, single]) assert.equal(await store.release(request.jobId, 1), true);
                  taken.splice(taken.indexOf(request), 1);
                }
              }
              const ids = workers.map((w) => w.workerId);
              assert.deepEqual(await leaseCounts(paged.store, ids), await leaseCounts(single.store, ids), `counts after round ${round}`);
              for (const request of taken) {
                assert.deepEqual(await paged.store.lease(request.jobId, 1), await single.store.lease(request.jobId, 1));
              }
            }
          } finally {
            await paged.cleanup();
            await single.cleanup();
          }
        });
      }
    });

    describe("worker capacity", () => {
      test(
        `a capacity above ${MAX_WORKER_CAPACITY} or not an integer is refused; ${MAX_WORKER_CAPACITY} is placed on`,
        withStore(async (store) => {
          await assert.rejects(store.attach(worker("a", { capacity: MAX_WORKER_CAPACITY + 1 }), SESSION, REPLICA, HEARTBEAT_TTL_MS), RangeError);
          await assert.rejects(store.attach(worker("a", { capacity: 1.5 }), SESSION, REPLICA, HEARTBEAT_TTL_MS), RangeError);
          await store.attach(worker("a", { capacity: MAX_WORKER_CAPACITY }), SESSION, REPLICA, HEARTBEAT_TTL_MS);
          await assert.rejects(store.updateWorker(worker("a", { capacity: MAX_WORKER_CAPACITY + 1 })), RangeError);
          const pages = Array.from({ length: MAX_WORKER_CAPACITY / 100 }, (_, p) =>
            Array.from({ length: 100 }, (_, n) => job(`j${p * 100 + n}`)),
          );
          for (const page of pages) {
            for (const result of await store.acquireMany(page)) assert.ok(result !== "held" && result.ok);
          }
          assert.deepEqual(await store.acquire(job("over")), { ok: false, code: "all_busy", healthy: 1, matching: 1 });
          assert.deepEqual(await leaseCounts(store, ["a"]), { a: MAX_WORKER_CAPACITY });
        }),
      );
    });

    describe("sessions", () => {
      test(
        "detach by a replaced session is a no-op; leases outlive a detach",
        withStore(async (store) => {
          await store.attach(worker("a"), "s1", "r1", HEARTBEAT_TTL_MS);
          placed(await store.acquire(job("j1")));
          await store.attach(worker("a"), "s2", "r2", HEARTBEAT_TTL_MS);

          assert.equal(await store.detach("a", "s1"), false);
          const status = (await store.workerStatus(["a"])).get("a")!;
          assert.equal(status.attached, true);
          assert.equal(status.sessionId, "s2");
          assert.equal(status.replicaId, "r2");
          assert.equal(status.activeLeases, 1);
          placed(await store.acquire(job("j2")));

          assert.equal(await store.detach("a", "s2"), true);
          const detached = (await store.workerStatus(["a"])).get("a")!;
          assert.equal(detached.attached, false);
          assert.equal(detached.sessionId, null);
          assert.equal(detached.fresh, false);
          assert.equal(detached.activeLeases, 2);
          assert.deepEqual(await store.lease("j1", 1), { jobId: "j1", attempt: 1, workerId: "a" });
          assert.equal((await store.acquire(job("j3"))).ok, false);
        }),
      );

      test(
        "a heartbeat from a replaced or unknown session returns false",
        withStore(async (store) => {
          await store.attach(worker("a"), "s1", REPLICA, HEARTBEAT_TTL_MS);
          await store.attach(worker("a"), "s2", REPLICA, HEARTBEAT_TTL_MS);
          assert.equal(await store.heartbeat("a", "s1", HEARTBEAT_TTL_MS, LEASE_TTL_MS), false);
          assert.equal(await store.heartbeat("a", "s2", HEARTBEAT_TTL_MS, LEASE_TTL_MS), true);
          assert.equal(await store.heartbeat("nobody", "s1", HEARTBEAT_TTL_MS, LEASE_TTL_MS), false);
        }),
      );

      test(
        "heartbeats arriving together are each answered: the superseded session's false, the others' true",
        withStore(async (store) => {
          const ids = Array.from({ length: 50 }, (_, i) => `w${i}`);
          await attachAll(store, ids.map((id) => worker(id)));
          await store.attach(worker("w7"), "newer", REPLICA, HEARTBEAT_TTL_MS);
          await store.detach("w9", SESSION);
          const answers = await Promise.all(ids.map((id) => store.heartbeat(id, SESSION, HEARTBEAT_TTL_MS, LEASE_TTL_MS)));
          assert.deepEqual(
            ids.filter((_, i) => !answers[i]),
            ["w7", "w9"],
          );
          const statuses = await store.workerStatus(["w7", "w9", "w8"]);
          assert.equal(statuses.get("w7")!.sessionId, "newer", "the stale heartbeat did not take the worker back");
          assert.equal(statuses.get("w9")!.attached, false, "the heartbeat of a detached session does not attach it again");
          assert.equal(statuses.get("w8")!.fresh, true);
        }),
      );

      test(
        "a worker whose agent stops heartbeating stops being healthy within the TTL; those that beat stay healthy",
        withStore(async (store) => {
          const TTL = 300;
          const ids = Array.from({ length: 20 }, (_, i) => `w${i}`);
          await attachAll(store, ids.map((id) => worker(id, { capacity: 100 })), TTL);
          const silent = new Set(["w0", "w1", "w2"]);
          const startedAt = Date.now();
          // Beat every 100 ms for three TTLs, all but the silent ones, all at once.
          while (Date.now() - startedAt < 3 * TTL) {
            const beats = ids.filter((id) => !silent.has(id)).map((id) => store.heartbeat(id, SESSION, TTL, LEASE_TTL_MS));
            assert.ok((await Promise.all(beats)).every(Boolean));
            await sleep(100);
          }
          const statuses = await store.workerStatus(ids);
          for (const id of ids) assert.equal(statuses.get(id)!.fresh, !silent.has(id), `${id} fresh`);
          for (let n = 0; n < 40; n++) {
            const chosen = placed(await store.acquire(job(`j${n}`))).workerId;
            assert.ok(!silent.has(chosen), `job j${n} went to ${chosen}, whose agent stopped heartbeating`);
          }
        }),
      );

      test(
        "workerStatus reports unknown workers as detached with no leases",
        withStore(async (store) => {
          await attachAll(store, [worker("a")]);
          const statuses = await store.workerStatus(["a", "ghost"]);
          const a = statuses.get("a")!;
          assert.equal(a.attached, true);
          assert.equal(a.sessionId, SESSION);
          assert.equal(a.replicaId, REPLICA);
          assert.equal(a.fresh, true);
          assert.equal(typeof a.lastHeartbeatMs, "number");
          assert.deepEqual(statuses.get("ghost"), {
            attached: false,
            sessionId: null,
            replicaId: null,
            lastHeartbeatMs: null,
            fresh: false,
            activeLeases: 0,
          });
        }),
      );

      test(
        "updateWorker changes what selection sees at once",
        withStore(async (store) => {
          await attachAll(store, [worker("a", { capacity: 1 }), worker("b", { capacity: 1 })]);
          await store.updateWorker(worker("a", { capacity: 1, acceptsWork: false }));
          assert.equal(placed(await store.acquire(job("j1"))).workerId, "b");
          assert.deepEqual(await store.acquire(job("j2")), { ok: false, code: "all_busy", healthy: 1, matching: 1 });

          await store.updateWorker(worker("a", { capacity: 2, labels: ["gpu"] }));
          assert.equal((await store.workerStatus(["a"])).get("a")!.attached, true);
          assert.equal(placed(await store.acquire(job("j2", { requiredLabels: ["gpu"] }))).workerId, "a");
          assert.equal(placed(await store.acquire(job("j3"))).workerId, "a");

          await store.updateWorker(worker("b", { capacity: 2, poolId: "pool-b" }));
          assert.deepEqual(await store.acquire(job("j4")), { ok: false, code: "all_busy", healthy: 1, matching: 1 });
          assert.equal(placed(await store.acquire(job("j4", { poolId: "pool-b" }))).workerId, "b");
        }),
      );

      test(
        "removeWorker forgets the worker, its session and its leases",
        withStore(async (store) => {
          await attachAll(store, [worker("a"), worker("b")]);
          assert.equal(placed(await store.acquire(job("j1"))).workerId, "a");
          await store.removeWorker("a");
          assert.equal(await store.lease("j1", 1), null);
          assert.equal(await store.release("j1", 1), false);
          assert.deepEqual((await store.workerStatus(["a"])).get("a")!.activeLeases, 0);
          assert.equal((await store.workerStatus(["a"])).get("a")!.attached, false);
          for (const id of ["j2", "j3"]) assert.equal(placed(await store.acquire(job(id))).workerId, "b");
        }),
      );
    });

    describe("leases", () => {
      test(
        "leases of a heartbeating worker do not expire; once it stops, they expire within the lease TTL",
        withStore(async (store) => {
          const TTL = 300;
          await attachAll(store, [worker("a"), worker("b")]);
          placed(await store.acquire(job("j1", { leaseTtlMs: TTL })));
          placed(await store.acquire(job("j2", { leaseTtlMs: TTL })));
          const startedAt = Date.now();
          while (Date.now() - startedAt < 3 * TTL) {
            assert.deepEqual(
              await Promise.all(["a", "b"].map((id) => store.heartbeat(id, SESSION, HEARTBEAT_TTL_MS, TTL))),
              [true, true],
            );
            assert.deepEqual(await store.reapExpiredLeases(), []);
            await sleep(100);
          }
          assert.ok((await store.lease("j1", 1)) !== null && (await store.lease("j2", 1)) !== null, "both leases held after three TTLs");
          // Only b beats from now on.
          const quietSince = Date.now();
          while (Date.now() - quietSince < TTL + 100) {
            assert.equal(await store.heartbeat("b", SESSION, HEARTBEAT_TTL_MS, TTL), true);
            await sleep(100);
          }
          const reaped = await store.reapExpiredLeases();
          assert.equal(reaped.length, 1);
          assert.equal(reaped[0]!.workerId, "a");
          const kept = await store.lease(reaped[0]!.jobId === "j1" ? "j2" : "j1", 1);
          assert.equal(kept?.workerId, "b");
        }),
      );

      test(
        "release frees the lease once",
        withStore(async (store) => {
          await attachAll(store, [worker("a")]);
          placed(await store.acquire(job("j1", { attempt: 2 })));
          assert.deepEqual(await store.lease("j1", 2), { jobId: "j1", attempt: 2, workerId: "a" });
          assert.equal(await store.lease("j1", 1), null);
          assert.equal(await store.release("j1", 2), true);
          assert.equal(await store.release("j1", 2), false);
          assert.equal(await store.lease("j1", 2), null);
          assert.deepEqual(await leaseCounts(store, ["a"]), { a: 0 });
        }),
      );

      test(
        "acquiring an attempt whose lease is held is rejected and leaves that lease alone",
        withStore(async (store) => {
          await attachAll(store, [worker("a"), worker("b")]);
          assert.equal(placed(await store.acquire(job("j1"))).workerId, "a");
          await assert.rejects(store.acquire(job("j1")), /already held/);
          assert.deepEqual(await store.lease("j1", 1), { jobId: "j1", attempt: 1, workerId: "a" });
          assert.deepEqual(await leaseCounts(store, ["a", "b"]), { a: 1, b: 0 });
        }),
      );

      test(
        "an expired lease reads as gone and the reaper frees its capacity",
        withStore(async (store) => {
          await attachAll(store, [worker("a", { capacity: 1 })]);
          placed(await store.acquire(job("j1", { leaseTtlMs: 100 })));
          await sleep(140);
          assert.equal(await store.lease("j1", 1), null);
          assert.equal((await store.acquire(job("j2"))).ok, false);
          assert.deepEqual(await store.reapExpiredLeases(), [{ jobId: "j1", attempt: 1, workerId: "a" }]);
          assert.deepEqual(await store.reapExpiredLeases(), []);
          assert.deepEqual(await leaseCounts(store, ["a"]), { a: 0 });
          assert.equal(placed(await store.acquire(job("j2"))).workerId, "a");
        }),
      );

      test(
        "a heartbeat extends the worker's leases",
        withStore(async (store) => {
          await attachAll(store, [worker("a")]);
          placed(await store.acquire(job("j1", { leaseTtlMs: SHORT_TTL_MS })));
          await sleep(50);
          assert.equal(await store.heartbeat("a", SESSION, HEARTBEAT_TTL_MS, 1000), true);
          // Past the original expiry, well inside the extended one.
          await sleep(SHORT_TTL_MS);
          assert.deepEqual(await store.lease("j1", 1), { jobId: "j1", attempt: 1, workerId: "a" });
          assert.deepEqual(await store.reapExpiredLeases(), []);
        }),
      );

      test(
        "restoreLease re-creates a lease once, and moves it if another worker held it",
        withStore(async (store) => {
          await attachAll(store, [worker("a"), worker("b")]);
          const lease = { jobId: "j1", attempt: 3, workerId: "a" };
          await store.restoreLease(lease, LEASE_TTL_MS);
          await store.restoreLease(lease, LEASE_TTL_MS);
          assert.deepEqual(await store.lease("j1", 3), lease);
          assert.deepEqual(await leaseCounts(store, ["a", "b"]), { a: 1, b: 0 });
          assert.equal(placed(await store.acquire(job("j2"))).workerId, "b");

          await store.restoreLease({ ...lease, workerId: "b" }, LEASE_TTL_MS);
          assert.deepEqual(await leaseCounts(store, ["a", "b"]), { a: 0, b: 2 });
          assert.equal(await store.release("j1", 3), true);
          assert.deepEqual(await leaseCounts(store, ["a", "b"]), { a: 0, b: 1 });
        }),
      );

      test(
        "a lease restored before its worker attaches counts once it does",
        withStore(async (store) => {
          await store.restoreLease({ jobId: "j1", attempt: 1, workerId: "a" }, LEASE_TTL_MS);
          await attachAll(store, [worker("a", { capacity: 1 })]);
          assert.deepEqual(await leaseCounts(store, ["a"]), { a: 1 });
          assert.deepEqual(await store.acquire(job("j2")), { ok: false, code: "all_busy", healthy: 1, matching: 1 });
        }),
      );
    });

    describe("messages", () => {
      test(
        "a delivery reaches the handler of the replica holding the worker",
        withStore(async (store) => {
          const received: Record<string, string[]> = { r1: [], r2: [] };
          for (const replica of ["r1", "r2"]) {
            await store.onDelivery(replica, (d) => received[replica].push(`${d.workerId}:${d.payload}`));
          }
          await store.attach(worker("a"), "s1", "r1", HEARTBEAT_TTL_MS);
          await store.attach(worker("b"), "s2", "r2", HEARTBEAT_TTL_MS);

          assert.equal(await store.deliver({ workerId: "b", payload: "one" }), true);
          assert.equal(await store.deliver({ workerId: "b", payload: "two" }), true);
          assert.equal(await store.deliver({ workerId: "ghost", payload: "lost" }), false);
          await store.detach("a", "s1");
          assert.equal(await store.deliver({ workerId: "a", payload: "lost" }), false);

          await waitFor(() => received.r2.length === 2, "two deliveries on r2");
          await sleep(20);
          assert.deepEqual(received, { r1: [], r2: ["b:one", "b:two"] });
        }),
      );

      test(
        "publish reaches every subscriber of the channel, in order, until it unsubscribes",
        withStore(async (store) => {
          const first: string[] = [];
          const second: string[] = [];
          const other: string[] = [];
          const unsubscribeFirst = await store.subscribe("logs", (p) => first.push(p));
          await store.subscribe("logs", (p) => second.push(p));
          await store.subscribe("other", (p) => other.push(p));

          for (const payload of ["m1", "m2", "m3"]) await store.publish("logs", payload);
          await waitFor(() => first.length === 3 && second.length === 3, "three messages on both subscribers");
          assert.deepEqual(first, ["m1", "m2", "m3"]);
          assert.deepEqual(second, ["m1", "m2", "m3"]);

          await unsubscribeFirst();
          await store.publish("logs", "m4");
          await waitFor(() => second.length === 4, "the fourth message");
          await sleep(20);
          assert.deepEqual(first, ["m1", "m2", "m3"]);
          assert.deepEqual(other, []);
        }),
      );

      test(
        "publishBytes delivers every byte unchanged (not text), in order, to every byte subscriber until it unsubscribes",
        withStore(async (store) => {
          const first: Uint8Array[] = [];
          const second: Uint8Array[] = [];
          const unsubscribeFirst = await store.subscribeBytes("bytes", (p) => first.push(p));
          await store.subscribeBytes("bytes", (p) => second.push(p));
          // Not valid UTF-8 (a lone 0xff, a cut multi-byte sequence), zeros, and one large payload.
          const large = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
          const payloads = [new Uint8Array([0xff, 0x00, 0xc3]), new Uint8Array(0), large];
          for (const payload of payloads) await store.publishBytes("bytes", payload);
          await waitFor(() => first.length === 3 && second.length === 3, "three payloads on both subscribers");
          for (const received of [first, second]) {
            assert.deepEqual(received.map((p) => Buffer.from(p).toString("hex")), payloads.map((p) => Buffer.from(p).toString("hex")));
          }

          await unsubscribeFirst();
          await store.publishBytes("bytes", new Uint8Array([1]));
          await waitFor(() => second.length === 4, "the fourth payload");
          await sleep(20);
          assert.equal(first.length, 3);
        }),
      );
    });
  });
}
