// The lease/health store for the embedded single-process mode. This module
// owns all of its state (workers, sessions, leases, run affinity, handlers) in
// plain maps; nothing else reads or writes it. Same contract and rules as the
// Redis store (src/stores/redis), judged by Date.now or the injected clock.
// Deliveries and publishes reach handlers asynchronously, in order.

import {
  assertCapacity,
  assertOnePool,
  blocksTheQueue,
  LeaseHeldError,
  type AcquireRequest,
  type AcquireResult,
  type Delivery,
  type LeaseInfo,
  type LeaseStore,
  type PlacementWorker,
  type Unsubscribe,
  type WorkerLiveStatus,
} from "../lease-store.ts";
import { silentLogger, type Logger } from "../../logger.ts";

/** How long a run remembers the worker that last served it, for run affinity. */
const RUN_AFFINITY_TTL_MS = 24 * 60 * 60 * 1000;

export interface MemoryLeaseStoreOptions {
  now?: () => number;
  /** Where a throwing delivery or channel handler is reported. */
  logger?: Logger;
}

interface WorkerEntry {
  placement: PlacementWorker | null;
  sessionId: string | null;
  replicaId: string | null;
  lastHeartbeatMs: number | null;
  heartbeatTtlMs: number;
  leaseIds: Set<string>;
  exclusiveLeaseId: string | null;
  /** Sequence of the last lease; 0 = never leased (least recent). */
  lastLeasedSeq: number;
}

interface LeaseEntry extends LeaseInfo {
  expiresAt: number;
}

function leaseKey(jobId: string, attempt: number): string {
  return `${jobId}:${attempt}`;
}

/** Selection order: fewer leases, then less recently leased, then workerId. */
function compareForSelection(a: [string, WorkerEntry], b: [string, WorkerEntry]): number {
  return (
    a[1].leaseIds.size - b[1].leaseIds.size ||
    a[1].lastLeasedSeq - b[1].lastLeasedSeq ||
    (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
  );
}

/** The generation marker of a store that only ends with its process. */
const MEMORY_EPOCH = "memory";

export function createMemoryLeaseStore(options: MemoryLeaseStoreOptions = {}): LeaseStore {
  const now = options.now ?? Date.now;
  const logger = options.logger ?? silentLogger();
  const workers = new Map<string, WorkerEntry>();
  const poolMembers = new Map<string, Set<string>>();
  const leases = new Map<string, LeaseEntry>();
  /** Run -> the worker that last served it. Insertion order = expiry order (a refresh re-inserts). */
  const runs = new Map<string, { workerId: string; expiresAt: number }>();
  const deliveryHandlers = new Map<string, Set<(delivery: Delivery) => void>>();
  const channelHandlers = new Map<string, Set<(payload: string) => void>>();
  const byteChannelHandlers = new Map<string, Set<(payload: Uint8Array) => void>>();
  let leaseSeq = 0;

  const entryFor = (workerId: string): WorkerEntry => {
    let entry = workers.get(workerId);
    if (!entry) {
      entry = {
        placement: null,
        sessionId: null,
        replicaId: null,
        lastHeartbeatMs: null,
        heartbeatTtlMs: 0,
        leaseIds: new Set(),
        exclusiveLeaseId: null,
        lastLeasedSeq: 0,
      };
      workers.set(workerId, entry);
    }
    return entry;
  };

  const setPlacement = (worker: PlacementWorker) => {
    assertCapacity(worker);
    const entry = entryFor(worker.workerId);
    if (entry.placement) poolMembers.get(entry.placement.poolId)?.delete(worker.workerId);
    entry.placement = { ...worker, labels: [...worker.labels] };
    let members = poolMembers.get(worker.poolId);
    if (!members) poolMembers.set(worker.poolId, (members = new Set()));
    members.add(worker.workerId);
  };

  const isFresh = (entry: WorkerEntry, at: number) =>
    entry.sessionId !== null && entry.lastHeartbeatMs !== null && entry.lastHeartbeatMs + entry.heartbeatTtlMs > at;

  const removeLease = (key: string): LeaseEntry | undefined => {
    const lease = leases.get(key);
    if (!lease) return undefined;
    leases.delete(key);
    const entry = workers.get(lease.workerId);
    if (entry) {
      entry.leaseIds.delete(key);
      if (entry.exclusiveLeaseId === key) entry.exclusiveLeaseId = null;
    }
    return lease;
  };

  const addLease = (lease: LeaseInfo, expiresAt: number) => {
    const key = leaseKey(lease.jobId, lease.attempt);
    leases.set(key, { jobId: lease.jobId, attempt: lease.attempt, workerId: lease.workerId, expiresAt });
    entryFor(lease.workerId).leaseIds.add(key);
    return key;
  };

  const lastWorkerOfRun = (runId: string, at: number): string | undefined => {
    const run = runId === "" ? undefined : runs.get(runId);
    return run && run.expiresAt > at ? run.workerId : undefined;
  };

  const recordRun = (runId: string, workerId: string, at: number) => {
    for (const [id, run] of runs) {
      if (run.expiresAt > at) break;
      runs.delete(id);
    }
    if (runId === "") return;
    runs.delete(runId);
    runs.set(runId, { workerId, expiresAt: at + RUN_AFFINITY_TTL_MS });
  };

  const acquire = (request: AcquireRequest): AcquireResult => {
    const key = leaseKey(request.jobId, request.attempt);
    if (leases.has(key)) throw new LeaseHeldError(`lease ${key} is already held; release it before acquiring it again`);
    const at = now();
    let healthy = 0;
    let matching = 0;
    const eligible: [string, WorkerEntry][] = [];
    for (const workerId of poolMembers.get(request.poolId) ?? []) {
      const entry = workers.get(workerId)!;
      const placement = entry.placement!;
      if (!placement.acceptsWork || !isFresh(entry, at)) continue;
      healthy++;
      if (!request.requiredLabels.every((label) => placement.labels.includes(label))) continue;
      matching++;
      const hasRoom = entry.leaseIds.size < placement.capacity && entry.exclusiveLeaseId === null;
      if (hasRoom && (!request.exclusive || entry.leaseIds.size === 0)) eligible.push([workerId, entry]);
    }
    if (eligible.length === 0) {
      const code = matching === 0 ? "no_healthy_worker" : "all_busy";
      return { ok: false, code, healthy, matching };
    }

    let chosen = eligible[0];
    for (const candidate of eligible) if (compareForSelection(candidate, chosen) < 0) chosen = candidate;
    const fewest = chosen[1].leaseIds.size;
    const tied = eligible.filter(([, entry]) => entry.leaseIds.size === fewest);
    let tieBreak: "fewest_leases" | "same_run" | "least_recently_leased" = "fewest_leases";
    if (tied.length > 1) {
      const served = lastWorkerOfRun(request.runId, at);
      const sameRun = served === undefined ? undefined : tied.find(([workerId]) => workerId === served);
      if (sameRun) chosen = sameRun;
      tieBreak = sameRun ? "same_run" : "least_recently_leased";
    }

    const [workerId, entry] = chosen;
    const leasesBefore = entry.leaseIds.size;
    addLease({ jobId: request.jobId, attempt: request.attempt, workerId }, at + request.leaseTtlMs);
    entry.lastLeasedSeq = ++leaseSeq;
    if (request.exclusive) entry.exclusiveLeaseId = key;
    recordRun(request.runId, workerId, at);
    return { ok: true, workerId, leasesBefore, eligible: eligible.length, tieBreak };
  };

  const dispatch = <T>(handlers: Set<(value: T) => void> | undefined, value: T, name: string) => {
    for (const handler of handlers ?? []) {
      queueMicrotask(() => {
        try {
          handler(value);
        } catch (error) {
          logger.error({ err: error, channel: name }, "pub/sub handler threw");
        }
      });
    }
  };

  const addHandler = <T>(map: Map<string, Set<(value: T) => void>>, name: string, handler: (value: T) => void) => {
    let handlers = map.get(name);
    if (!handlers) map.set(name, (handlers = new Set()));
    // A wrapper per call, so subscribing the same function twice needs two unsubscribes.
    const listener = (value: T) => handler(value);
    handlers.add(listener);
    const unsubscribe: Unsubscribe = async () => {
      handlers.delete(listener);
      if (handlers.size === 0 && map.get(name) === handlers) map.delete(name);
    };
    return unsubscribe;
  };

  return {
    async start() {},

    async close() {
      deliveryHandlers.clear();
      channelHandlers.clear();
      byteChannelHandlers.clear();
    },

    async attach(worker, sessionId, replicaId, heartbeatTtlMs) {
      setPlacement(worker);
      const entry = entryFor(worker.workerId);
      entry.sessionId = sessionId;
      entry.replicaId = replicaId;
      entry.lastHeartbeatMs = now();
      entry.heartbeatTtlMs = heartbeatTtlMs;
    },

    async detach(workerId, sessionId) {
      const entry = workers.get(workerId);
      if (!entry || entry.sessionId !== sessionId) return false;
      entry.sessionId = null;
      entry.replicaId = null;
      return true;
    },

    async heartbeat(workerId, sessionId, heartbeatTtlMs, leaseTtlMs) {
      const entry = workers.get(workerId);
      if (!entry || entry.sessionId !== sessionId) return false;
      const at = now();
      entry.lastHeartbeatMs = at;
      entry.heartbeatTtlMs = heartbeatTtlMs;
      for (const key of entry.leaseIds) {
        const lease = leases.get(key);
        if (lease && lease.expiresAt > at) lease.expiresAt = at + leaseTtlMs;
      }
      return true;
    },

    async updateWorker(worker) {
      setPlacement(worker);
    },

    async removeWorker(workerId) {
      const entry = workers.get(workerId);
      if (!entry) return;
      for (const key of entry.leaseIds) leases.delete(key);
      if (entry.placement) poolMembers.get(entry.placement.poolId)?.delete(workerId);
      workers.delete(workerId);
    },

    async acquire(request) {
      return acquire(request);
    },

    async acquireMany(requests) {
      assertOnePool(requests);
      const results: Array<AcquireResult | "held"> = [];
      for (const request of requests) {
        let result: AcquireResult | "held";
        try {
          result = acquire(request);
        } catch (error) {
          if (!(error instanceof LeaseHeldError)) throw error;
          result = "held";
        }
        results.push(result);
        if (blocksTheQueue(request, result)) break;
      }
      return results;
    },

    async release(jobId, attempt) {
      return removeLease(leaseKey(jobId, attempt)) !== undefined;
    },

    async lease(jobId, attempt) {
      const lease = leases.get(leaseKey(jobId, attempt));
      if (!lease || lease.expiresAt <= now()) return null;
      return { jobId: lease.jobId, attempt: lease.attempt, workerId: lease.workerId };
    },

    async reapExpiredLeases() {
      const at = now();
      const reaped: LeaseInfo[] = [];
      for (const [key, lease] of leases) {
        if (lease.expiresAt > at) continue;
        removeLease(key);
        reaped.push({ jobId: lease.jobId, attempt: lease.attempt, workerId: lease.workerId });
      }
      return reaped;
    },

    async restoreLease(lease, leaseTtlMs) {
      const key = leaseKey(lease.jobId, lease.attempt);
      const existing = leases.get(key);
      const expiresAt = now() + leaseTtlMs;
      if (existing?.workerId === lease.workerId) {
        existing.expiresAt = expiresAt;
        return;
      }
      if (existing) removeLease(key);
      addLease(lease, expiresAt);
    },

    async workerStatus(workerIds) {
      const at = now();
      const statuses = new Map<string, WorkerLiveStatus>();
      for (const workerId of workerIds) {
        const entry = workers.get(workerId);
        statuses.set(workerId, {
          attached: entry?.sessionId != null,
          sessionId: entry?.sessionId ?? null,
          replicaId: entry?.replicaId ?? null,
          lastHeartbeatMs: entry?.lastHeartbeatMs ?? null,
          fresh: entry ? isFresh(entry, at) : false,
          activeLeases: entry?.leaseIds.size ?? 0,
        });
      }
      return statuses;
    },

    async deliver(delivery) {
      const replicaId = workers.get(delivery.workerId)?.replicaId;
      if (replicaId == null) return false;
      const handlers = deliveryHandlers.get(replicaId);
      if (!handlers) return false;
      dispatch(handlers, { workerId: delivery.workerId, payload: delivery.payload }, replicaId);
      return true;
    },

    async onDelivery(replicaId, handler) {
      return addHandler(deliveryHandlers, replicaId, handler);
    },

    // Memory lives and dies with the process: it never loses data behind the server's back.
    async epoch() {
      return MEMORY_EPOCH;
    },

    async claimEpoch() {
      return MEMORY_EPOCH;
    },

    async publish(channel, payload) {
      dispatch(channelHandlers.get(channel), payload, channel);
    },

    async subscribe(channel, handler) {
      return addHandler(channelHandlers, channel, handler);
    },

    async publishBytes(channel, payload) {
      dispatch(byteChannelHandlers.get(channel), payload, channel);
    },

    async subscribeBytes(channel, handler) {
      return addHandler(byteChannelHandlers, channel, handler);
    },
  };
}
