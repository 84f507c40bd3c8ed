// Key and channel names of the Redis lease store. The layout and what each
// key holds is described at the top of lua/includes/lease-state.lua, which
// derives the same names inside the scripts; keep the two in step.

export interface LeaseKeys {
  prefix: string;
  worker(workerId: string): string;
  workerLeases(workerId: string): string;
  poolHealthy(poolId: string): string;
  poolFree(poolId: string): string;
  run(runId: string): string;
  leases: string;
  leaseExpiry: string;
  sessions: string;
  heartbeats: string;
  leasedWorkers: string;
  leaseSeq: string;
  epoch: string;
  layout: string;
  /** The replica id is appended (inside the deliver script too). */
  deliveryChannelPrefix: string;
  channel(name: string): string;
}

export function leaseKeys(prefix: string): LeaseKeys {
  return {
    prefix,
    worker: (workerId) => `${prefix}worker:${workerId}`,
    workerLeases: (workerId) => `${prefix}worker-leases:${workerId}`,
    poolHealthy: (poolId) => `${prefix}pool-healthy:${poolId}`,
    poolFree: (poolId) => `${prefix}pool-free:${poolId}`,
    run: (runId) => `${prefix}run:${runId}`,
    leases: `${prefix}leases`,
    leaseExpiry: `${prefix}lease-expiry`,
    sessions: `${prefix}sessions`,
    heartbeats: `${prefix}heartbeats`,
    leasedWorkers: `${prefix}leased-workers`,
    leaseSeq: `${prefix}lease-seq`,
    epoch: `${prefix}epoch`,
    layout: `${prefix}layout`,
    deliveryChannelPrefix: `${prefix}deliver:`,
    channel: (name) => `${prefix}channel:${name}`,
  };
}
