// A short-lived cache of the records every submission and placement pass
// reads: a space's default pool, pools by id, targets by id, worker names.
// They change rarely (admin calls), and reading them from Postgres for every
// job was most of the per-job round trips.
//
// Freshness: entries live CACHE_TTL_MS. Changes made through this replica
// invalidate at once (the handlers call invalidate*); changes made through
// another replica are seen within CACHE_TTL_MS. Pool *membership* (worker
// counts) and job state are never cached.

import type { TargetRecord, WorkerPoolRecord } from "../domain.ts";
import type { Database } from "../stores/database.ts";

export const CACHE_TTL_MS = 1000;

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

  function cached<T>(key: string, load: () => Promise<T>): Promise<T> {
    const hit = entries.get(key) as Entry<T> | undefined;
    const at = now();
    if (hit !== undefined && hit.expires > at) return hit.value;
    const value = load();
    entries.set(key, { value, expires: at + CACHE_TTL_MS });
    // A failed load is not remembered.
    value.catch(() => entries.delete(key));
    if (entries.size > 10_000) {
      for (const [k, e] of entries) if (e.expires <= at) entries.delete(k);
    }
    return value;
  }

  return {
    defaultPool: (space) => cached(`space:${space}`, () => db.ensureSpace(space)),
    pool: (id) => cached(`pool:${id}`, () => db.pools.get(id)),
    target: (id) => cached(`target:${id}`, () => db.targets.get(id)),
    workerName: (id) => cached(`worker:${id}`, async () => (await db.workers.get(id))?.name ?? null),
    invalidate: () => entries.clear(),
  };
}
