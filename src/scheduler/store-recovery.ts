// Detects that the lease store lost its data and rebuilds it from Postgres.
//
// Redis holds only derived state; if it is flushed or restarts without
// persistence, the epoch key it carries disappears. Every replica checks the
// epoch every CHECK_INTERVAL_MS (and before it fails a job for lack of
// healthy workers). When the epoch is gone, the replica:
//   1. pauses placement on this replica and reports not-ready,
//   2. restores the lease of every attempt Postgres says is assigned or
//      running (idempotent, so replicas may do it at once),
//   3. re-attaches the agent sessions it holds,
//   4. claims a new epoch (SET NX: the first replica's value wins),
//   5. resumes placement and drains every pool with queued jobs.
// A replica that sees a different epoch than it knew (another replica
// rebuilt) re-attaches its own sessions, since only it knows them.
// No job is re-run: leases come back from Postgres before any agent could be
// told its lease was lost.
//
// All recovery state (the known epoch, the recovering flag) is owned here.

import { randomUUID } from "node:crypto";
import type { Logger } from "../logger.ts";
import type { Database } from "../stores/database.ts";
import type { LeaseStore } from "../stores/lease-store.ts";

const CHECK_INTERVAL_MS = 1000;

export interface StoreRecoveryOptions {
  db: Database;
  leases: LeaseStore;
  logger: Logger;
  leaseTtlMs: number;
  /** Re-attaches the sessions this replica holds. */
  reattachSessions: () => Promise<number>;
  /** Placement stops while the store is being rebuilt, and resumes after. */
  setPaused: (paused: boolean) => void;
  /** Drains every pool with queued jobs. */
  resume: () => Promise<void>;
  onStateChange?: (state: "ok" | "recovering") => void;
}

export interface StoreRecovery {
  start(): Promise<void>;
  /** True when the store still holds the data this replica relies on. Triggers recovery when not. */
  verify(): Promise<boolean>;
  readonly recovering: boolean;
  close(): Promise<void>;
}

export function createStoreRecovery(options: StoreRecoveryOptions): StoreRecovery {
  const { db, leases, logger } = options;
  let known: string | null = null;
  let recovering: Promise<void> | null = null;
  let timer: NodeJS.Timeout | null = null;

  async function rebuild(): Promise<void> {
    const started = Date.now();
    options.setPaused(true);
    options.onStateChange?.("recovering");
    logger.warn({ event: "lease_store_lost" }, "the lease store lost its data; rebuilding it from Postgres");
    try {
      const live = await db.jobs.liveAttempts();
      for (const attempt of live) {
        await leases.restoreLease({ jobId: attempt.jobId, attempt: attempt.attempt, workerId: attempt.workerId }, options.leaseTtlMs);
      }
      const sessions = await options.reattachSessions();
      known = await leases.claimEpoch(randomUUID());
      logger.info(
        { event: "lease_store_rebuilt", leases: live.length, sessions, ms: Date.now() - started },
        "lease store rebuilt from Postgres",
      );
    } finally {
      options.setPaused(false);
      options.onStateChange?.("ok");
    }
    // Not awaited: a placement pass may be the one waiting for this rebuild.
    options.resume().catch((error) => logger.error({ event: "resume_failed", err: error }, "resuming placement failed"));
  }

  async function check(): Promise<boolean> {
    const current = await leases.epoch();
    if (current !== null && current === known) return true;
    if (current !== null) {
      // Another replica rebuilt the store: put this replica's sessions back.
      known = current;
      const sessions = await options.reattachSessions();
      logger.info({ event: "lease_store_epoch_changed", sessions }, "another replica rebuilt the lease store; sessions re-attached");
      return true;
    }
    recovering ??= rebuild().finally(() => {
      recovering = null;
    });
    await recovering;
    return false;
  }

  return {
    async start() {
      // A store that lost its data while no replica was running is rebuilt
      // before any agent reconnects and asks about its running attempts.
      known = await leases.epoch();
      if (known === null) await rebuild();
      timer = setInterval(() => {
        if (recovering !== null) return;
        check().catch((error) => logger.warn({ event: "lease_store_check_failed", err: error }, "checking the lease store failed"));
      }, CHECK_INTERVAL_MS);
      timer.unref();
    },
    verify: () => check(),
    get recovering() {
      return recovering !== null;
    },
    async close() {
      if (timer !== null) clearInterval(timer);
      await recovering?.catch(() => {});
    },
  };
}
