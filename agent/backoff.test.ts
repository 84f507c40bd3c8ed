import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createBackoff } from "./backoff.ts";

describe("backoff", () => {
  test("the ceiling doubles from initial and stays bounded by max", () => {
    const backoff = createBackoff({ initialMs: 100, maxMs: 1_000, random: () => 0.999999 });
    const delays = Array.from({ length: 8 }, () => backoff.next());
    assert.deepEqual(delays, [99, 199, 399, 799, 999, 999, 999, 999]);
    assert.equal(backoff.attempts, 8);
  });

  test("delays are jittered over [0, ceiling)", () => {
    const backoff = createBackoff({ initialMs: 1_000, maxMs: 1_000 });
    const delays = new Set(Array.from({ length: 50 }, () => backoff.next()));
    assert.ok(delays.size > 10, "delays should vary");
    for (const delay of delays) assert.ok(delay >= 0 && delay < 1_000);
  });

  test("reset() starts over from the initial ceiling", () => {
    const backoff = createBackoff({ initialMs: 100, maxMs: 10_000, random: () => 0.5 });
    for (let i = 0; i < 5; i++) backoff.next();
    assert.equal(backoff.next(), 1_600);
    backoff.reset();
    assert.equal(backoff.attempts, 0);
    assert.equal(backoff.next(), 50);
  });

  test("never overflows after many attempts", () => {
    const backoff = createBackoff({ initialMs: 250, maxMs: 10_000, random: () => 0.999999 });
    for (let i = 0; i < 10_000; i++) assert.ok(backoff.next() < 10_000);
  });

  test("refuses nonsensical bounds", () => {
    assert.throws(() => createBackoff({ initialMs: 0, maxMs: 10 }), RangeError);
    assert.throws(() => createBackoff({ initialMs: 100, maxMs: 10 }), RangeError);
  });
});
