// Lookups by key that many callers make at once (a thousand agents coming
// back after a restart each look up their credential, then their attempts'
// logs) are answered by one statement for many keys instead of one round
// trip each. A lookup goes out at once while fewer than `maxInFlight`
// statements are running; otherwise it waits, and the next statement takes
// every lookup that waited (up to `maxBatch` keys). A single caller on a
// quiet server so waits for nothing; under a burst, statements stay few and
// large. The same key asked twice in one batch is looked up once.
//
// The batch state (queue, statements in flight) is owned here.

export interface BatchedLookupOptions<K, V> {
  /** One statement for many keys; keys missing from the answer get `missing`. */
  fetch(keys: K[]): Promise<Map<string, V>>;
  /** The key as a string, to match answers to callers and merge duplicates. */
  id(key: K): string;
  missing: V;
  /** Statements running at once. Default 2. */
  maxInFlight?: number;
  /** Keys per statement. Default 500. */
  maxBatch?: number;
}

interface Waiter<V> {
  resolve(value: V): void;
  reject(error: unknown): void;
}

export function createBatchedLookup<K, V>(options: BatchedLookupOptions<K, V>): (key: K) => Promise<V> {
  const maxInFlight = options.maxInFlight ?? 2;
  const maxBatch = options.maxBatch ?? 500;
  /** Keys waiting for a statement, by id, each with its callers. */
  let queued = new Map<string, { key: K; waiters: Array<Waiter<V>> }>();
  let inFlight = 0;

  function pump(): void {
    while (inFlight < maxInFlight && queued.size > 0) {
      let batch: typeof queued;
      if (queued.size <= maxBatch) {
        batch = queued;
        queued = new Map();
      } else {
        batch = new Map();
        for (const [id, entry] of queued) {
          if (batch.size >= maxBatch) break;
          batch.set(id, entry);
          queued.delete(id);
        }
      }
      inFlight++;
      const keys = [...batch.values()].map((entry) => entry.key);
      Promise.resolve()
        .then(() => options.fetch(keys))
        .then(
          (answers) => {
            for (const [id, entry] of batch) {
              const value = answers.has(id) ? answers.get(id)! : options.missing;
              for (const waiter of entry.waiters) waiter.resolve(value);
            }
          },
          (error: unknown) => {
            for (const entry of batch.values()) for (const waiter of entry.waiters) waiter.reject(error);
          },
        )
        .finally(() => {
          inFlight--;
          pump();
        });
    }
  }

  return (key) =>
    new Promise<V>((resolve, reject) => {
      const id = options.id(key);
      const entry = queued.get(id);
      if (entry !== undefined) entry.waiters.push({ resolve, reject });
      else queued.set(id, { key, waiters: [{ resolve, reject }] });
      pump();
    });
}
