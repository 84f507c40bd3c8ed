// The lease/health store contract. Two implementations keep it: Redis
// (src/stores/redis, shared by every replica) and memory (src/stores/memory,
// the embedded default for a single process). One contract suite
// (test/contract/lease-store.contract.ts) runs against both.
//
// What lives here is hot and derived: which worker's stream is attached to
// which replica, heartbeat freshness, active leases, the selection order of a
// pool's workers, and the channels that carry messages between replicas.
// Postgres stays the source of truth; everything here can be rebuilt from it.
//
// Time is the store's own clock (Redis TIME for Redis), never the caller's.

/** What the store needs to know about a worker to place jobs on it. */
export interface PlacementWorker {
  workerId: string;
  poolId: string;
  capacity: number;
  labels: string[];
  /** False when the worker is disabled or draining: it takes no new lease. */
  acceptsWork: boolean;
}

export interface AcquireRequest {
  poolId: string;
  jobId: string;
  attempt: number;
  /** Empty string: no run. Ties among least-leased workers go to one that served this run. */
  runId: string;
  /** Every one must be among the worker's labels. */
  requiredLabels: string[];
  /** Take only a worker with no lease; it then takes no other lease until this one ends. */
  exclusive: boolean;
  leaseTtlMs: number;
}

export type AcquireResult =
  | {
      ok: true;
      workerId: string;
      /** Active leases of the chosen worker before this one. */
      leasesBefore: number;
      /** Healthy workers that were eligible (labels, capacity) at the decision. */
      eligible: number;
      /** Why this worker: "fewest leases", "same run", "least recently leased". */
      tieBreak: "fewest_leases" | "same_run" | "least_recently_leased";
    }
  | {
      ok: false;
      /**
       * no_healthy_worker: no worker of the pool is attached, fresh and accepting
       * work, or none of those carries the required labels.
       * all_busy: healthy matching workers exist but none has room.
       */
      code: "no_healthy_worker" | "all_busy";
      /** Attached, fresh, accepting work. */
      healthy: number;
      /** Of those, the ones carrying every required label. */
      matching: number;
    };

export interface LeaseInfo {
  jobId: string;
  attempt: number;
  workerId: string;
}

export interface WorkerLiveStatus {
  /** A stream is attached (some session holds it). */
  attached: boolean;
  sessionId: string | null;
  replicaId: string | null;
  /** Last heartbeat, store clock, ms since epoch; null if never. */
  lastHeartbeatMs: number | null;
  /** Attached and the last heartbeat is within the heartbeat TTL. */
  fresh: boolean;
  activeLeases: number;
}

/** A message routed to the replica holding a worker's stream. */
export interface Delivery {
  workerId: string;
  /** Opaque to the store: the agent plane encodes and decodes it. */
  payload: string;
}

export type Unsubscribe = () => Promise<void>;

/** acquire() for an attempt that already holds a lease: another replica placed it first. */
export class LeaseHeldError extends Error {
  override name = "LeaseHeldError";
}

export interface LeaseStore {
  /** Connects; resolves when the store can serve. */
  start(): Promise<void>;
  /** Unsubscribes and disconnects; leaves no timer or socket behind. */
  close(): Promise<void>;

  /**
   * Records that `sessionId` on `replicaId` now holds the worker's stream,
   * replacing any older session, refreshes its heartbeat and puts the worker
   * into its pool's selection. Also records the worker's placement attributes.
   */
  attach(worker: PlacementWorker, sessionId: string, replicaId: string, heartbeatTtlMs: number): Promise<void>;
  /**
   * Detaches the worker only if `sessionId` still holds it (a stale stream's
   * cleanup must not evict a fresh reconnect). Leases stay until they expire
   * or are released. Returns whether it detached.
   */
  detach(workerId: string, sessionId: string): Promise<boolean>;
  /**
   * Refreshes heartbeat freshness and extends every lease the worker holds by
   * `leaseTtlMs`. Returns false if `sessionId` no longer holds the worker.
   * Both count from when the call was made. A store may record heartbeats in
   * batches (Redis: the replica's heartbeats of a short window, at most a
   * tenth of either TTL, in one script call); the promise settles once this
   * one is recorded.
   */
  heartbeat(workerId: string, sessionId: string, heartbeatTtlMs: number, leaseTtlMs: number): Promise<boolean>;
  /** Updates placement attributes (state, capacity, labels) without touching the session. */
  updateWorker(worker: PlacementWorker): Promise<void>;
  /** Forgets the worker entirely (deleted), including its session. */
  removeWorker(workerId: string): Promise<void>;

  /** Atomically chooses a worker of the pool and records a lease on it. Throws LeaseHeldError if the attempt holds one. */
  acquire(request: AcquireRequest): Promise<AcquireResult>;
  /**
   * A page of one pool's queue in one atomic call: decides the requests in
   * order, each as acquire() would, each seeing the leases taken before it.
   * Stops after the first request without labels and without exclusivity
   * that found every matching worker busy (the rest could only take room
   * that request is owed). One answer per request decided, in order: its
   * result, or "held" where acquire() would throw LeaseHeldError. Every
   * request must name the same pool and lease TTL.
   */
  acquireMany(requests: AcquireRequest[]): Promise<Array<AcquireResult | "held">>;
  /** Releases the attempt's lease. Returns false if there was none (lost or released). */
  release(jobId: string, attempt: number): Promise<boolean>;
  /** The attempt's lease, or null if it was released or expired. */
  lease(jobId: string, attempt: number): Promise<LeaseInfo | null>;
  /** Leases whose TTL ran out and that nobody released; removes them and frees their capacity. */
  reapExpiredLeases(): Promise<LeaseInfo[]>;
  /** Re-creates a lease (adoption after a store loss or a server restart). Idempotent. */
  restoreLease(lease: LeaseInfo, leaseTtlMs: number): Promise<void>;

  workerStatus(workerIds: string[]): Promise<Map<string, WorkerLiveStatus>>;

  /** Routes a message to the replica whose session holds the worker. False if no replica holds it. */
  deliver(delivery: Delivery): Promise<boolean>;
  /** Receives the deliveries routed to this replica. Call once, before attaching workers. */
  onDelivery(replicaId: string, handler: (delivery: Delivery) => void): Promise<Unsubscribe>;

  /**
   * The store's generation marker: null when the store has lost its data
   * (Redis flushed or restarted without persistence) and nobody has rebuilt
   * it yet. See src/scheduler/store-recovery.ts.
   */
  epoch(): Promise<string | null>;
  /** Sets the generation marker unless one is set; returns the one in force. */
  claimEpoch(candidate: string): Promise<string>;

  /** Fan-out to every replica (job state changes, pool capacity freed). */
  publish(channel: string, payload: string): Promise<void>;
  subscribe(channel: string, handler: (payload: string) => void): Promise<Unsubscribe>;
  /**
   * Fan-out of bytes (log chunks): sent and received as they are, with no
   * text encoding. A channel carries either text or bytes, never both. Every
   * byte subscriber of the channel, on any replica, gets each payload once;
   * those on the publishing replica get it without a round trip through the
   * store, and the Redis store sends it to Redis only when another replica
   * subscribes. A handler may keep the payload but must not modify it: every
   * handler of the channel gets the same one.
   */
  publishBytes(channel: string, payload: Uint8Array): Promise<void>;
  subscribeBytes(channel: string, handler: (payload: Uint8Array) => void): Promise<Unsubscribe>;
}

/**
 * The largest capacity a store accepts (the agent plane and the built-in
 * worker allow 1-1,000). The Redis store keeps a worker's lease count and its
 * last-leased sequence in one sorted-set score, exact up to this.
 */
export const MAX_WORKER_CAPACITY = 1000;

/** Checks a worker's capacity: an integer from 0 to MAX_WORKER_CAPACITY. */
export function assertCapacity(worker: PlacementWorker): void {
  if (!Number.isInteger(worker.capacity) || worker.capacity < 0 || worker.capacity > MAX_WORKER_CAPACITY) {
    throw new RangeError(`worker ${worker.workerId}: capacity must be an integer from 0 to ${MAX_WORKER_CAPACITY}, got ${worker.capacity}`);
  }
}

/** acquireMany's stop rule: a plain request (no labels, not exclusive) that found no room. */
export function blocksTheQueue(request: AcquireRequest, result: AcquireResult | "held"): boolean {
  return result !== "held" && !result.ok && result.code === "all_busy" && request.requiredLabels.length === 0 && !request.exclusive;
}

/** Checks acquireMany's precondition: one pool, one lease TTL. */
export function assertOnePool(requests: AcquireRequest[]): void {
  const [first] = requests;
  for (const request of requests) {
    if (request.poolId !== first!.poolId || request.leaseTtlMs !== first!.leaseTtlMs) {
      throw new RangeError("acquireMany: every request must name the same pool and lease TTL");
    }
  }
}
