// A short-lived cache of the records every submission and placement pass
// reads: a space's default pool, pools by id, targets by id, worker names.
// They change rarely (admin calls), and reading them from Postgres for every
// job was most of the per-job round trips.
//
// Freshness: entries live CACHE_TTL_MS. Changes made through this replica
// invalidate at once (the handlers call invalidate*); changes made through
// another replica are seen within CACHE_TTL_MS. Pool *membership* (worker
// counts) and job state are never cached. A worker's name never changes
// (nothing renames a worker), so a name found is kept WORKER_NAME_TTL_MS:
// each job's answer names its worker, and with the short lifetime most
// answers at a modest rate cost a query (a pool's workers each take a job
// less often than once a second).

import type { TargetRecord, WorkerPoolRecord } from "../domain.ts";
import type { Database } from "../stores/database.ts";

export const CACHE_TTL_MS = 1000;
/** How long a worker's name, once found, is kept: names are immutable. */
export const WORKER_NAME_TTL_MS = 10 * 60_000;
const MAX_ENTRIES = 10_000;

interface Entry<T> {
  value: Promise<T>;
  expires: number;
}

export interface ConfigCache {
  defaultPool(space: string): Promise<WorkerPoolRecord>;
  pool(id: string): Promise<WorkerPoolRecord | null>;
  target(id: string): Promise<TargetRecord | null>;
  workerName(id: string): Promise<string | null>;
  /** Forget everything (pools, targets or the default pool changed here). */
  invalidate(): void;
}

export function createConfigCache(db: Database, now: () => number = Date.now): ConfigCache {
  const entries = new Map<string, Entry<unknown>>();

  /** `keep`: how long a loaded value lives (default CACHE_TTL_MS). */
  function cached<T>(key: string, load: () => Promise<T>, keep: (value: T) => number = () => CACHE_TTL_MS): Promise<T> {
    const hit = entries.get(key) as Entry<T> | undefined;
    const at = now();
    if (hit !== undefined && hit.expires > at) return hit.value;
    const value = load();
    const entry: Entry<T> = { value, expires: at + CACHE_TTL_MS };
    entries.set(key, entry);
    // A failed load is not remembered.
    value.then(
      (loaded) => {
        entry.expires = at + keep(loaded);
      },
      () => {
        if (entries.get(key) === entry) entries.delete(key);
      },
    );
    if (entries.size > MAX_ENTRIES) {
      for (const [k, e] of entries) if (e.expires <= at) entries.delete(k);
      // Still full (more live worker names than this): the oldest go first.
      for (const k of entries.keys()) {
        if (entries.size <= MAX_ENTRIES * 0.9) break;
        entries.delete(k);
      }
    }
    return value;
  }

  return {
    defaultPool: (space) => cached(`space:${space}`, () => db.ensureSpace(space)),
    pool: (id) => cached(`pool:${id}`, () => db.pools.get(id)),
    target: (id) => cached(`target:${id}`, () => db.targets.get(id)),
    // A worker not found (not yet visible, or deleted) is asked for again soon.
    workerName: (id) =>
      cached(`worker:${id}`, async () => (await db.workers.get(id))?.name ?? null, (name) => (name === null ? CACHE_TTL_MS : WORKER_NAME_TTL_MS)),
    invalidate: () => entries.clear(),
  };
}
