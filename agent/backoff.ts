// Jittered backoff for reconnects and registration retries. Each delay is
// uniform in [0, ceiling) ("full jitter"), so a fleet of agents that lost the
// same server does not come back in lockstep. The ceiling grows with the time
// spent failing, not with the number of tries: it is `initialMs` at first and
// then half the time since the first failure, up to `maxMs`:
//
//   ceiling = min(maxMs, max(initialMs, (now - firstFailure) * GROWTH))
//
// So an agent is back at most half an outage after the server is (plus
// initialMs): a server that restarts in 2 s has every agent back within about
// 3 s, where a ceiling doubling per try could leave the unluckiest of a
// thousand agents waiting four times as long as the outage. Tries against a
// server that stays down still thin out (the number grows with the log of the
// outage) and settle at one per maxMs/2 on average. The caller resets it once
// a connection got as far as a Welcome.

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Uniform in [0, 1); tests pass a fixed one. */
  random?: () => number;
  /** Milliseconds on a monotonic clock; tests pass a fake one. */
  now?: () => number;
}

export interface Backoff {
  /** The delay before the next try; its ceiling grows with the time since the first next() after a reset. */
  next(): number;
  reset(): void;
  /** Calls to next() since the last reset. */
  readonly attempts: number;
}

/** The ceiling is this fraction of the time spent failing so far. */
export const BACKOFF_GROWTH = 0.5;

export function createBackoff(options: BackoffOptions): Backoff {
  const { initialMs, maxMs } = options;
  if (!(initialMs > 0) || !(maxMs >= initialMs)) {
    throw new RangeError(`backoff needs 0 < initialMs <= maxMs (got ${initialMs}, ${maxMs})`);
  }
  const random = options.random ?? Math.random;
  const now = options.now ?? (() => performance.now());
  let attempts = 0;
  let firstFailureAt = 0;
  return {
    next() {
      const at = now();
      if (attempts === 0) firstFailureAt = at;
      attempts++;
      const ceiling = Math.min(maxMs, Math.max(initialMs, (at - firstFailureAt) * BACKOFF_GROWTH));
      return Math.floor(random() * ceiling);
    },
    reset() {
      attempts = 0;
    },
    get attempts() {
      return attempts;
    },
  };
}
