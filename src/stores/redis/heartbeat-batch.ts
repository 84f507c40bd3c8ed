// Coalesces the heartbeats of a replica's sessions into one script call
// (lua/heartbeat-many-4.lua) per short window, so that a thousand idle agents
// beating every 5 s cost Redis a handful of commands per window rather than
// several per heartbeat.
//
// A heartbeat joins the open batch and its promise settles when the batch has
// been recorded: true if its session still held the worker, false if not,
// rejected if Redis failed. Each heartbeat carries its age (how long it
// waited here, by this process's monotonic clock), so the script records it
// as received at (Redis now - age): freshness and lease expiry are judged by
// the Redis clock, as if each heartbeat had been recorded on arrival.
//
// The window is at most MAX_HEARTBEAT_WINDOW_MS (or the store's
// heartbeatWindowMs) and a tenth of the shortest heartbeat
// or lease TTL in the batch, so coalescing delays what Redis sees by a small
// part of either TTL (the default 15 s TTL: 1 s).
//
// The batcher also remembers, per worker attached through this replica, its
// pool and the heartbeat TTL recorded at attach: the script then moves a
// healthy worker's score in its pool with one multi-member ZADD, and writes a
// worker's hash only when the TTL changes. What it remembers is a hint: a
// worker whose pool moved under it is found by the script and reindexed.
//
// Lifecycle: heartbeats may arrive at any time until close(), which records
// the open batch at once and leaves no timer behind.

import type { ScriptRunner } from "./lease-scripts.ts";
import type { LeaseKeys } from "./lease-keys.ts";

/** Longest a heartbeat waits for its batch, unless the store is told otherwise. */
export const MAX_HEARTBEAT_WINDOW_MS = 1000;
/** Heartbeats per script call: bounds how long one call holds Redis. */
const MAX_BATCH = 2000;

interface PendingBeat {
  workerId: string;
  sessionId: string;
  receivedAt: number;
  heartbeatTtlMs: number;
  leaseTtlMs: number;
  resolve: (held: boolean) => void;
  reject: (error: unknown) => void;
}

interface KnownWorker {
  poolId: string;
  heartbeatTtlMs: number;
}

export interface HeartbeatBatcher {
  heartbeat(workerId: string, sessionId: string, heartbeatTtlMs: number, leaseTtlMs: number): Promise<boolean>;
  /** The worker was attached through this replica with this pool and heartbeat TTL. */
  attached(workerId: string, poolId: string, heartbeatTtlMs: number): void;
  /** Its pool may have changed. */
  moved(workerId: string, poolId: string): void;
  /** The worker is no longer held through this replica. */
  forget(workerId: string): void;
  /** Records the open batch now and stops the timer. */
  close(): Promise<void>;
}

export function createHeartbeatBatcher(run: ScriptRunner, keys: LeaseKeys, maxWindowMs = MAX_HEARTBEAT_WINDOW_MS): HeartbeatBatcher {
  const known = new Map<string, KnownWorker>();
  let pending: PendingBeat[] = [];
  let timer: NodeJS.Timeout | null = null;
  /** When the open batch is due (performance.now()). */
  let due = Infinity;

  async function record(batch: PendingBeat[]): Promise<void> {
    const at = performance.now();
    const beats = batch.map((beat) => {
      const worker = known.get(beat.workerId);
      const ttlChanged = worker === undefined || worker.heartbeatTtlMs !== beat.heartbeatTtlMs;
      return [
        beat.workerId,
        beat.sessionId,
        Math.max(0, Math.round(at - beat.receivedAt)),
        beat.heartbeatTtlMs,
        beat.leaseTtlMs,
        worker?.poolId ?? "",
        ttlChanged ? 1 : 0,
      ];
    });
    let lost: number[];
    try {
      lost = (await run("heartbeat-many", [keys.sessions, keys.heartbeats, keys.leasedWorkers, keys.leaseExpiry], [
        keys.prefix,
        JSON.stringify(beats),
      ])) as number[];
    } catch (error) {
      for (const beat of batch) beat.reject(error);
      return;
    }
    const notHeld = new Set(lost);
    batch.forEach((beat, i) => {
      const held = !notHeld.has(i + 1);
      const worker = known.get(beat.workerId);
      if (!held) known.delete(beat.workerId);
      else if (worker !== undefined) worker.heartbeatTtlMs = beat.heartbeatTtlMs;
      beat.resolve(held);
    });
  }

  function flush(): Promise<void> {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    due = Infinity;
    const batch = pending;
    pending = [];
    const calls: Promise<void>[] = [];
    for (let first = 0; first < batch.length; first += MAX_BATCH) calls.push(record(batch.slice(first, first + MAX_BATCH)));
    return Promise.all(calls).then(() => undefined);
  }

  return {
    heartbeat(workerId, sessionId, heartbeatTtlMs, leaseTtlMs) {
      return new Promise<boolean>((resolve, reject) => {
        const receivedAt = performance.now();
        pending.push({ workerId, sessionId, receivedAt, heartbeatTtlMs, leaseTtlMs, resolve, reject });
        const window = Math.max(0, Math.min(maxWindowMs, Math.floor(heartbeatTtlMs / 10), Math.floor(leaseTtlMs / 10)));
        if (receivedAt + window < due) {
          if (timer !== null) clearTimeout(timer);
          due = receivedAt + window;
          timer = setTimeout(() => void flush(), window);
        }
      });
    },
    attached(workerId, poolId, heartbeatTtlMs) {
      known.set(workerId, { poolId, heartbeatTtlMs });
    },
    moved(workerId, poolId) {
      const worker = known.get(workerId);
      if (worker !== undefined) worker.poolId = poolId;
    },
    forget(workerId) {
      known.delete(workerId);
    },
    close: () => flush(),
  };
}
