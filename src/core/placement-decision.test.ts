import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { decideOnChoice, JOBS_AHEAD_COUNTED, routeJob, waitingReason } from "./placement-decision.ts";

describe("routeJob", () => {
  const cases = [
    { name: "default pool without workers: built-in worker", isDefault: true, workers: 0, builtin: true, expect: "builtin" },
    { name: "default pool without workers, built-in disabled: fails", isDefault: true, workers: 0, builtin: false, expect: "fail" },
    { name: "default pool with workers (healthy or not): the pool", isDefault: true, workers: 1, builtin: true, expect: "pool" },
    { name: "another pool without workers: the pool, never built-in", isDefault: false, workers: 0, builtin: true, expect: "pool" },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const route = routeJob({ poolIsSpaceDefault: c.isDefault, poolName: "default", registeredWorkers: c.workers, builtinEnabled: c.builtin });
      assert.equal(route.kind, c.expect);
      if (route.kind === "fail") assert.equal(route.reason, "builtin_worker_disabled");
    });
  }
});

describe("decideOnChoice", () => {
  const base = { poolName: "linux", targetName: null, requiredLabels: [], queueDeadlineMs: null, now: 1000 };

  test("leased: explains the tie-break", () => {
    const outcome = decideOnChoice({ ...base, choice: { ok: true, workerId: "w1", leasesBefore: 1, eligible: 3, tieBreak: "same_run" } });
    assert.equal(outcome.kind, "leased");
    assert.match(outcome.kind === "leased" ? outcome.reason : "", /already served this run/);
  });

  test("all busy: waits, and the reason says how many are ahead", () => {
    const outcome = decideOnChoice({ ...base, choice: { ok: false, code: "all_busy", healthy: 3, matching: 3 } });
    assert.equal(outcome.kind, "wait");
    assert.equal(
      waitingReason(outcome.kind === "wait" ? outcome.reason : "", "linux", 12),
      "pool linux: 3 healthy workers, all at capacity; 12 jobs ahead",
    );
    assert.equal(waitingReason("", "linux", 1), "pool linux: waiting in the queue; 1 job ahead");
    assert.equal(waitingReason("", "linux", JOBS_AHEAD_COUNTED - 1), "pool linux: waiting in the queue; 999 jobs ahead");
    assert.equal(waitingReason("", "linux", JOBS_AHEAD_COUNTED), "pool linux: waiting in the queue; 1,000 or more jobs ahead");
  });

  test("no healthy worker: fails at once", () => {
    const outcome = decideOnChoice({ ...base, choice: { ok: false, code: "no_healthy_worker", healthy: 0, matching: 0 } });
    assert.deepEqual(outcome, { kind: "fail", reason: "no_healthy_worker", message: "pool linux has no healthy worker" });
  });

  test("no healthy worker in a target's pool names the target", () => {
    const outcome = decideOnChoice({ ...base, targetName: "aks-prod", choice: { ok: false, code: "no_healthy_worker", healthy: 0, matching: 0 } });
    assert.equal(outcome.kind, "fail");
    assert.match(outcome.kind === "fail" ? outcome.message : "", /target aks-prod/);
  });

  test("no healthy worker with a queue timeout: waits until the deadline, then fails", () => {
    const choice = { ok: false, code: "no_healthy_worker", healthy: 0, matching: 0 } as const;
    assert.equal(decideOnChoice({ ...base, choice, queueDeadlineMs: 5000 }).kind, "wait");
    assert.equal(decideOnChoice({ ...base, choice, queueDeadlineMs: 5000, now: 5000 }).kind, "fail");
  });

  test("a job waiting for a healthy worker reads the same on every pass: it names its deadline", () => {
    const choice = { ok: false, code: "no_healthy_worker", healthy: 0, matching: 0 } as const;
    const deadline = Date.parse("2026-11-23T22:50:00.250Z");
    const early = decideOnChoice({ ...base, choice, queueDeadlineMs: deadline, now: deadline - 25_000 });
    const later = decideOnChoice({ ...base, choice, queueDeadlineMs: deadline, now: deadline - 3_000 });
    assert.deepEqual(early, { kind: "wait", reason: "pool linux has no healthy worker; waiting for one until 2026-11-23T22:50:00Z" });
    assert.deepEqual(later, early);
  });

  test("healthy workers without the labels: names the labels", () => {
    const outcome = decideOnChoice({ ...base, requiredLabels: ["gpu"], choice: { ok: false, code: "no_healthy_worker", healthy: 2, matching: 0 } });
    assert.deepEqual(outcome, { kind: "fail", reason: "no_healthy_worker", message: "pool linux has 2 healthy workers but none carries labels gpu" });
  });
});
