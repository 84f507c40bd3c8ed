// The placer alone, on real PGlite and the in-process lease store, with the
// built-in worker disabled: what the scheduler tests that drive passes by
// hand share. Each test brings its own pools and workers.

import { silentLogger } from "../../src/logger.ts";
import { createConfigCache } from "../../src/scheduler/config-cache.ts";
import { createJobEvents } from "../../src/scheduler/job-events.ts";
import { createJobPlacer, type JobPlacer } from "../../src/scheduler/job-placer.ts";
import type { Database } from "../../src/stores/database.ts";
import type { LeaseStore } from "../../src/stores/lease-store.ts";
import { createMemoryLeaseStore } from "../../src/stores/memory/memory-lease-store.ts";
import { openDatabase } from "../../src/stores/postgres/open-database.ts";

export interface PlacerHarness {
  db: Database;
  /** The lease store itself, without `wrapLeases`. */
  store: LeaseStore;
  placer: JobPlacer;
  close(): Promise<void>;
}

export interface PlacerHarnessOptions {
  space: string;
  /** Lease TTL and assignment timeout. */
  ttlMs: number;
  /** Called with the rows of every queue page the placer reads. */
  onQueueRead?: (rows: number) => void;
  /** What the placer sees of the lease store. */
  wrapLeases?: (store: LeaseStore) => LeaseStore;
}

export async function openPlacerHarness(options: PlacerHarnessOptions): Promise<PlacerHarness> {
  const opened = await openDatabase({ dataDir: "memory://" });
  const { onQueueRead } = options;
  const db: Database =
    onQueueRead === undefined
      ? opened
      : {
          ...opened,
          jobs: {
            ...opened.jobs,
            async queued(...args) {
              const page = await opened.jobs.queued(...args);
              onQueueRead(page.length);
              return page;
            },
          },
        };
  const store = createMemoryLeaseStore();
  await store.start();
  await db.ensureSpace(options.space);
  await store.onDelivery("replica", () => {});
  const leases = options.wrapLeases?.(store) ?? store;
  const placer = createJobPlacer({
    db,
    cache: createConfigCache(db),
    leases,
    events: createJobEvents(leases),
    logger: silentLogger(),
    leaseTtlMs: options.ttlMs,
    assignmentTimeoutMs: options.ttlMs,
    builtin: { enabled: false, tryStart: async () => false },
  });
  return {
    db,
    store,
    placer,
    async close() {
      await placer.close();
      await store.close();
      await opened.close();
    },
  };
}
