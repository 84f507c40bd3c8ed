import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createBackoff } from "./backoff.ts";

/** A fake clock the test moves by the delays the backoff hands out. */
function clock() {
  let t = 1_000;
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

describe("backoff", () => {
  test("the ceiling is initial at first, then half the time spent failing, bounded by max", () => {
    const c = clock();
    const backoff = createBackoff({ initialMs: 100, maxMs: 1_000, random: () => 0.999999, now: c.now });
    assert.equal(backoff.next(), 99); // at 0 ms
    c.advance(150);
    assert.equal(backoff.next(), 99); // at 150 ms: half is 75, below initial
    c.advance(450);
    assert.equal(backoff.next(), 299); // at 600 ms
    c.advance(1_400);
    assert.equal(backoff.next(), 999); // at 2,000 ms: half is 1,000 = max
    c.advance(60_000);
    assert.equal(backoff.next(), 999);
    assert.equal(backoff.attempts, 5);
  });

  test("a fleet is back within half the outage after the server is", () => {
    // 1,000 agents lose the server at once; it is back 2 s later. Each try
    // before then fails at once (connection refused), as after a crash.
    const outageMs = 2_000;
    const initialMs = 250;
    let latest = 0;
    let tries = 0;
    for (let agent = 0; agent < 1_000; agent++) {
      const c = clock();
      const start = c.now();
      const backoff = createBackoff({ initialMs, maxMs: 10_000, now: c.now });
      while (c.now() - start < outageMs) {
        c.advance(backoff.next());
        tries++;
      }
      latest = Math.max(latest, c.now() - start);
    }
    assert.ok(latest <= outageMs * 1.5 + initialMs, `the last agent came back ${latest} ms after the outage began`);
    // Not a stampede: a dozen tries each over 2 s, not one per millisecond.
    assert.ok(tries / 1_000 < 15, `${tries / 1_000} tries per agent`);
  });

  test("delays are jittered over [0, ceiling)", () => {
    const backoff = createBackoff({ initialMs: 1_000, maxMs: 1_000 });
    const delays = new Set(Array.from({ length: 50 }, () => backoff.next()));
    assert.ok(delays.size > 10, "delays should vary");
    for (const delay of delays) assert.ok(delay >= 0 && delay < 1_000);
  });

  test("reset() starts over from the initial ceiling", () => {
    const c = clock();
    const backoff = createBackoff({ initialMs: 100, maxMs: 10_000, random: () => 0.5, now: c.now });
    backoff.next();
    c.advance(8_000);
    assert.equal(backoff.next(), 2_000);
    backoff.reset();
    assert.equal(backoff.attempts, 0);
    c.advance(8_000);
    assert.equal(backoff.next(), 50);
  });

  test("refuses nonsensical bounds", () => {
    assert.throws(() => createBackoff({ initialMs: 0, maxMs: 10 }), RangeError);
    assert.throws(() => createBackoff({ initialMs: 100, maxMs: 10 }), RangeError);
  });
});
