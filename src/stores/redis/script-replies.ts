// Turns the Lua scripts' raw replies into the contract's results: every
// numeric code a script returns is mapped here and nowhere else.

import { LeaseHeldError, type AcquireResult, type LeaseInfo, type WorkerLiveStatus } from "../lease-store.ts";

const ACQUIRED = 1;
const NO_HEALTHY_WORKER = -1;
const ALL_BUSY = -2;
const LEASE_ALREADY_HELD = -3;

const TIE_BREAKS = {
  1: "fewest_leases",
  2: "same_run",
  3: "least_recently_leased",
} as const;

/** Raised when a store's script reports a caller mistake or an unknown reply. */
export class LeaseStoreError extends Error {
  override name = "LeaseStoreError";
}

export function leaseId(jobId: string, attempt: number): string {
  if (!Number.isSafeInteger(attempt) || attempt < 0) {
    throw new LeaseStoreError(`attempt must be a non-negative integer, got ${attempt}`);
  }
  return `${jobId}:${attempt}`;
}

export function parseLeaseId(id: string, workerId: string): LeaseInfo {
  const colon = id.lastIndexOf(":");
  return { jobId: id.slice(0, colon), attempt: Number(id.slice(colon + 1)), workerId };
}

export function toAcquireResult(reply: unknown, id: string): AcquireResult {
  const [code, ...rest] = reply as [number, ...unknown[]];
  switch (code) {
    case ACQUIRED: {
      const [workerId, leasesBefore, eligible, tieBreak] = rest as [string, number, number, 1 | 2 | 3];
      return { ok: true, workerId, leasesBefore, eligible, tieBreak: TIE_BREAKS[tieBreak] };
    }
    case NO_HEALTHY_WORKER:
    case ALL_BUSY: {
      const [healthy, matching] = rest as [number, number];
      return { ok: false, code: code === ALL_BUSY ? "all_busy" : "no_healthy_worker", healthy, matching };
    }
    case LEASE_ALREADY_HELD:
      throw new LeaseHeldError(`lease ${id} is already held; release it before acquiring it again`);
    default:
      throw new LeaseStoreError(`unexpected reply from the acquire script: ${JSON.stringify(reply)}`);
  }
}

/** `1`/`0` replies of detach, heartbeat and release. */
export function toBoolean(reply: unknown): boolean {
  return reply === 1;
}

/** The deliver script: -1 when no session holds the worker, else the subscriber count. */
export function toDelivered(reply: unknown): boolean {
  return typeof reply === "number" && reply > 0;
}

export function toReapedLeases(reply: unknown): LeaseInfo[] {
  const flat = reply as string[];
  const leases: LeaseInfo[] = [];
  for (let i = 0; i < flat.length; i += 2) leases.push(parseLeaseId(flat[i], flat[i + 1]));
  return leases;
}

export function toWorkerStatuses(reply: unknown, workerIds: string[]): Map<string, WorkerLiveStatus> {
  const [now, ...fields] = reply as [number, ...string[]];
  const statuses = new Map<string, WorkerLiveStatus>();
  workerIds.forEach((workerId, i) => {
    const [session, replica, hb, hbTtl, leases] = fields.slice(i * 5, i * 5 + 5);
    const attached = session !== "";
    const lastHeartbeatMs = hb === "" ? null : Number(hb);
    statuses.set(workerId, {
      attached,
      sessionId: attached ? session : null,
      replicaId: attached ? replica : null,
      lastHeartbeatMs,
      fresh: attached && lastHeartbeatMs !== null && lastHeartbeatMs + Number(hbTtl) > now,
      activeLeases: leases === "" ? 0 : Number(leases),
    });
  });
  return statuses;
}
