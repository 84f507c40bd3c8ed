import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { WorkerRecord } from "../domain.ts";
import { helloChanges } from "./agent-session.ts";

const registered = new Date("2026-01-01T00:00:00Z");
const worker: WorkerRecord = {
  id: "w",
  space: "default",
  poolId: "p",
  name: "a1",
  labels: ["docker", "linux"],
  capacity: 2,
  state: "enabled",
  hostname: "h1",
  agentVersion: "1.0",
  createdAt: registered,
  lastSeenAt: null,
};
const same = { labels: ["docker", "linux"], capacity: 2, hostname: "h1", agentVersion: "1.0" };
const later = (ms: number) => new Date(registered.getTime() + ms);

describe("which Hellos are written to Postgres", () => {
  test("a reconnect that repeats what is stored is not written, so Welcomes do not queue behind commits", () => {
    assert.equal(helloChanges(worker, same, later(5_000)), false);
    assert.equal(helloChanges({ ...worker, lastSeenAt: later(10_000) }, same, later(30_000)), false);
  });

  test("new labels, capacity, hostname or version are always recorded", () => {
    assert.equal(helloChanges(worker, { ...same, labels: ["linux"] }, later(1)), true);
    assert.equal(helloChanges(worker, { ...same, labels: ["docker", "gpu"] }, later(1)), true);
    assert.equal(helloChanges(worker, { ...same, capacity: 3 }, later(1)), true);
    assert.equal(helloChanges(worker, { ...same, hostname: "h2" }, later(1)), true);
    assert.equal(helloChanges(worker, { ...same, agentVersion: "1.1" }, later(1)), true);
  });

  test("the last-seen time is refreshed at least once a minute", () => {
    assert.equal(helloChanges(worker, same, later(60_000)), true);
    assert.equal(helloChanges({ ...worker, lastSeenAt: later(60_000) }, same, later(119_000)), false);
    assert.equal(helloChanges({ ...worker, lastSeenAt: later(60_000) }, same, later(120_000)), true);
  });
});
