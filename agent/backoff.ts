// Jittered exponential backoff for reconnects ("full jitter": each delay is
// uniform in [0, min(max, initial * 2^n))), so a fleet of agents that lost the
// same server does not come back in lockstep. The caller resets it once a
// connection got as far as a Welcome.

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Uniform in [0, 1); tests pass a fixed one. */
  random?: () => number;
}

export interface Backoff {
  /** The delay before the next try; grows with every call until reset(). */
  next(): number;
  reset(): void;
  /** Calls to next() since the last reset. */
  readonly attempts: number;
}

/** Exponent cap: 2^30 * initial exceeds any sane max, and keeps the arithmetic exact. */
const MAX_EXPONENT = 30;

export function createBackoff(options: BackoffOptions): Backoff {
  const { initialMs, maxMs } = options;
  if (!(initialMs > 0) || !(maxMs >= initialMs)) {
    throw new RangeError(`backoff needs 0 < initialMs <= maxMs (got ${initialMs}, ${maxMs})`);
  }
  const random = options.random ?? Math.random;
  let attempts = 0;
  return {
    next() {
      const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempts, MAX_EXPONENT));
      attempts++;
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
