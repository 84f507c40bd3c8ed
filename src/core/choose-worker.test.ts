import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { chooseWorker, type ChoiceRequest, type WorkerSnapshot } from "./choose-worker.ts";

const NOW = 1_000_000;
const TTL = 15_000;

function worker(id: string, over: Partial<WorkerSnapshot> = {}): WorkerSnapshot {
  return {
    workerId: id,
    attached: true,
    lastHeartbeatMs: NOW - 1000,
    acceptsWork: true,
    labels: [],
    capacity: 4,
    activeLeases: 0,
    holdsExclusive: false,
    lastLeasedSeq: 0,
    servedRuns: new Set(),
    ...over,
  };
}

const plain: ChoiceRequest = { runId: "", requiredLabels: [], exclusive: false };

const cases: Array<{
  name: string;
  workers: WorkerSnapshot[];
  request?: Partial<ChoiceRequest>;
  expect: { workerId: string; tieBreak: string } | { code: "no_healthy_worker" | "all_busy"; healthy: number; matching: number };
}> = [
  {
    name: "fewest active leases wins",
    workers: [worker("a", { activeLeases: 2 }), worker("b", { activeLeases: 1 }), worker("c", { activeLeases: 3 })],
    expect: { workerId: "b", tieBreak: "fewest_leases" },
  },
  {
    name: "tie goes to the worker that served the same run",
    workers: [
      worker("a", { activeLeases: 1, lastLeasedSeq: 1 }),
      worker("b", { activeLeases: 1, lastLeasedSeq: 5, servedRuns: new Set(["run-1"]) }),
    ],
    request: { runId: "run-1" },
    expect: { workerId: "b", tieBreak: "same_run" },
  },
  {
    name: "run affinity never beats fewer leases",
    workers: [
      worker("a", { activeLeases: 0, lastLeasedSeq: 9 }),
      worker("b", { activeLeases: 1, servedRuns: new Set(["run-1"]) }),
    ],
    request: { runId: "run-1" },
    expect: { workerId: "a", tieBreak: "fewest_leases" },
  },
  {
    name: "then the least recently leased",
    workers: [worker("a", { lastLeasedSeq: 7 }), worker("b", { lastLeasedSeq: 3 }), worker("c", { lastLeasedSeq: 4 })],
    expect: { workerId: "b", tieBreak: "least_recently_leased" },
  },
  {
    name: "a never-leased worker counts as least recent",
    workers: [worker("a", { lastLeasedSeq: 7 }), worker("b", { lastLeasedSeq: 0 })],
    expect: { workerId: "b", tieBreak: "least_recently_leased" },
  },
  {
    name: "a worker at capacity is skipped even with the fewest leases elsewhere full",
    workers: [worker("a", { capacity: 1, activeLeases: 1 }), worker("b", { capacity: 4, activeLeases: 3 })],
    expect: { workerId: "b", tieBreak: "fewest_leases" },
  },
  {
    name: "all healthy workers at capacity: all_busy",
    workers: [worker("a", { capacity: 1, activeLeases: 1 }), worker("b", { capacity: 2, activeLeases: 2 })],
    expect: { code: "all_busy", healthy: 2, matching: 2 },
  },
  {
    name: "stale heartbeat is not healthy",
    workers: [worker("a", { lastHeartbeatMs: NOW - TTL - 1 }), worker("b", { activeLeases: 3 })],
    expect: { workerId: "b", tieBreak: "fewest_leases" },
  },
  {
    name: "a heartbeat exactly the TTL old is stale, as the stores judge it",
    workers: [worker("a", { lastHeartbeatMs: NOW - TTL }), worker("b", { activeLeases: 3 })],
    expect: { workerId: "b", tieBreak: "fewest_leases" },
  },
  {
    name: "a heartbeat without a stream is not healthy",
    workers: [worker("a", { attached: false })],
    expect: { code: "no_healthy_worker", healthy: 0, matching: 0 },
  },
  {
    name: "disabled or draining workers take no lease",
    workers: [worker("a", { acceptsWork: false })],
    expect: { code: "no_healthy_worker", healthy: 0, matching: 0 },
  },
  {
    name: "required labels filter workers",
    workers: [worker("a", { labels: ["linux"] }), worker("b", { labels: ["linux", "docker"], activeLeases: 2 })],
    request: { requiredLabels: ["docker"] },
    expect: { workerId: "b", tieBreak: "fewest_leases" },
  },
  {
    name: "healthy workers but none with the labels: no_healthy_worker",
    workers: [worker("a", { labels: ["linux"] })],
    request: { requiredLabels: ["windows"] },
    expect: { code: "no_healthy_worker", healthy: 1, matching: 0 },
  },
  {
    name: "exclusive job takes only an idle worker",
    workers: [worker("a", { activeLeases: 1 }), worker("b", { activeLeases: 0, lastLeasedSeq: 9 })],
    request: { exclusive: true },
    expect: { workerId: "b", tieBreak: "fewest_leases" },
  },
  {
    name: "exclusive job with every worker busy waits",
    workers: [worker("a", { activeLeases: 1 })],
    request: { exclusive: true },
    expect: { code: "all_busy", healthy: 1, matching: 1 },
  },
  {
    name: "a worker holding an exclusive lease takes nothing else",
    workers: [worker("a", { activeLeases: 1, holdsExclusive: true })],
    expect: { code: "all_busy", healthy: 1, matching: 1 },
  },
  {
    name: "empty pool: no_healthy_worker",
    workers: [],
    expect: { code: "no_healthy_worker", healthy: 0, matching: 0 },
  },
];

describe("chooseWorker", () => {
  for (const c of cases) {
    test(c.name, () => {
      const choice = chooseWorker(c.workers, { ...plain, ...c.request }, NOW, TTL);
      if ("workerId" in c.expect) {
        assert.equal(choice.ok, true, JSON.stringify(choice));
        assert.ok(choice.ok);
        assert.equal(choice.workerId, c.expect.workerId);
        assert.equal(choice.tieBreak, c.expect.tieBreak);
      } else {
        assert.deepEqual(choice, { ok: false, ...c.expect });
      }
    });
  }
});
