// The lookups every reconnecting agent makes (its credential, then the stored
// log of each attempt it announces), and reads of single jobs, are shared by
// concurrent callers: one statement answers many. What a caller gets must not
// depend on who else asked at the same moment: its own worker or null, its
// own attempt's highest stored seq or 0, its own job as last written or null,
// and a failing statement fails only its callers.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { hashSecret } from "../../src/auth/secrets.ts";
import { DEFAULT_SPACE } from "../../src/domain.ts";
import { createBatchedLookup } from "../../src/stores/postgres/batched-lookup.ts";
import { plainJob } from "../support/jobs.ts";
import { createTestDatabase, type TestDatabase } from "../support/postgres.ts";

describe("batched lookups", () => {
  test("concurrent lookups share statements and each caller gets its own answer", async () => {
    const statements: string[][] = [];
    const lookup = createBatchedLookup<string, number>({
      id: (key) => key,
      missing: -1,
      maxInFlight: 1,
      fetch: async (keys) => {
        statements.push(keys);
        await new Promise((resolve) => setTimeout(resolve, 10));
        return new Map(keys.filter((k) => k !== "unknown").map((k) => [k, k.length]));
      },
    });
    const keys = ["a", "bb", "unknown", "ccc", "bb", ...Array.from({ length: 50 }, (_, i) => `k${i}`)];
    const answers = await Promise.all(keys.map((k) => lookup(k)));
    assert.deepEqual(answers, keys.map((k) => (k === "unknown" ? -1 : k.length)));
    assert.equal(statements.length, 2, "the first lookup goes alone, the rest wait for one statement");
    assert.equal(statements[1]!.filter((k) => k === "bb").length, 1, "a key asked twice is looked up once");
  });

  test("a failing statement fails its callers only; later lookups go on", async () => {
    let fail = true;
    const lookup = createBatchedLookup<string, string>({
      id: (key) => key,
      missing: "",
      maxInFlight: 1,
      maxBatch: 2,
      fetch: async (keys) => {
        if (fail) {
          fail = false;
          throw new Error("store down");
        }
        return new Map(keys.map((k) => [k, k.toUpperCase()]));
      },
    });
    const results = await Promise.allSettled(["x", "y", "z"].map((k) => lookup(k)));
    assert.equal(results[0]!.status, "rejected");
    assert.deepEqual(results.slice(1).map((r) => (r.status === "fulfilled" ? r.value : "rejected")), ["Y", "Z"]);
    assert.equal(await lookup("w"), "W");
  });
});

describe("repository lookups under a burst", () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase({ label: "batched" });
  });
  after(async () => {
    await t?.cleanup();
  });

  test("a thousand concurrent credential lookups each find their own worker, or none", { timeout: 30_000 }, async () => {
    const pool = await t.db.ensureSpace(DEFAULT_SPACE);
    const workers = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        t.db.workers.create({
          space: DEFAULT_SPACE,
          poolId: pool.id,
          name: `w${i}`,
          labels: [],
          capacity: 1,
          credentialHash: hashSecret(`secret-${i}`),
          hostname: "h",
          agentVersion: "v",
        }),
      ),
    );
    const asks = Array.from({ length: 1000 }, (_, i) => i % 250);
    const found = await Promise.all(asks.map((i) => t.db.workers.byCredentialHash(hashSecret(`secret-${i}`))));
    found.forEach((worker, n) => {
      const i = asks[n]!;
      if (i < 200) assert.equal(worker?.id, workers[i]!.id);
      else assert.equal(worker, null, "an unknown credential finds no worker");
    });
  });

  test("concurrent max-seq lookups each get their own attempt's highest stored seq", { timeout: 30_000 }, async () => {
    const jobs: string[] = Array.from({ length: 20 }, () => randomUUID());
    const chunks = jobs.flatMap((jobId, j) =>
      Array.from({ length: j % 5 }, (_, s) => ({ jobId, attempt: 1 + (j % 2), seq: s + 1, stream: "stdout" as const, data: Buffer.from("x"), time: new Date() })),
    );
    await t.db.logs.append(chunks);
    const asks = jobs.flatMap((jobId, j) => [
      { jobId, attempt: 1 + (j % 2), expected: j % 5 },
      { jobId, attempt: 3, expected: 0 },
    ]);
    asks.push({ jobId: "not-a-uuid", attempt: 1, expected: 0 }, { jobId: jobs[1]!, attempt: 2 ** 40, expected: 0 });
    const got = await Promise.all(asks.map((a) => t.db.logs.maxSeq(a.jobId, a.attempt)));
    assert.deepEqual(got, asks.map((a) => a.expected));
  });

  test("concurrent job reads each get their own job as last written, or null", { timeout: 30_000 }, async () => {
    const space = `s-${randomUUID().slice(0, 8)}`;
    const created = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        t.db.jobs.create(plainJob({ space, name: `job-${i}`, env: { N: String(i) } })),
      ),
    );
    // A read made after a write sees it, whoever else reads at the same time.
    await t.db.jobs.transition(created[7]!.id, { states: ["queued"] }, { message: "changed" });
    const asks = [...created.map((job) => job.id), created[3]!.id.toUpperCase(), randomUUID(), "not-a-uuid"];
    const got = await Promise.all(asks.map((id) => t.db.jobs.get(id)));
    created.forEach((job, n) => {
      assert.equal(got[n]?.id, job.id);
      assert.equal(got[n]?.name, `job-${n}`);
      assert.deepEqual(got[n]?.env, { N: String(n) });
    });
    assert.equal(got[7]?.message, "changed");
    assert.equal(got[100]?.id, created[3]!.id, "an id in upper case finds the same job");
    assert.equal(got[101], null, "an unknown id finds nothing");
    assert.equal(got[102], null, "a malformed id finds nothing");
  });
});
