// Polls until a probe answers: the value it returns, once it is not undefined.
// A probe that throws fails the wait at once (the fault harness has its own
// waitUntil, which retries through errors, for stores that are down on purpose).

import { setTimeout as sleep } from "node:timers/promises";

export async function waitUntil<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}
