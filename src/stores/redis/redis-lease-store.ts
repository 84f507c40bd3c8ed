// The lease/health store on Redis, shared by every replica. Each state change
// is one Lua script (./lua, registered by lease-scripts.ts), so decisions are
// atomic across replicas and judged by the Redis clock. Key layout: see
// lua/includes/lease-state.lua. Heartbeats are the exception to one call per
// change: a replica's heartbeats are coalesced into one script call per short
// window (heartbeat-batch.ts), so idle agents cost Redis a fixed handful of
// commands per window however many there are.
//
// Two connections: one for commands and scripts, one for pub/sub (delivery
// to the replica holding a worker's stream, and plain fan-out channels).
//
// Lifecycle: created -> started (start) -> closed (close). close() quits both
// connections; nothing else holds a socket or a timer.

import { Redis } from "ioredis";
import { silentLogger, type Logger } from "../../logger.ts";
import { assertCapacity, assertOnePool, LeaseHeldError, type Delivery, type LeaseInfo, type LeaseStore, type PlacementWorker } from "../lease-store.ts";
import { createBytePublisher, newOrigin } from "./byte-fanout.ts";
import { createChannelSubscriber } from "./channel-subscriber.ts";
import { createHeartbeatBatcher } from "./heartbeat-batch.ts";
import { leaseKeys } from "./lease-keys.ts";
import { defineScripts } from "./lease-scripts.ts";
import {
  LeaseStoreError,
  leaseId,
  parseLeaseId,
  toAcquireResult,
  toBoolean,
  toDelivered,
  toReapedLeases,
  toWorkerStatuses,
} from "./script-replies.ts";

const DEFAULT_KEY_PREFIX = "muster:";
/** How long a run remembers the worker that last served it, for run affinity. */
const RUN_AFFINITY_TTL_MS = 24 * 60 * 60 * 1000;
/** Expired leases removed per script call; reaping loops while batches come back full. */
const REAP_BATCH = 500;

export interface RedisLeaseStoreOptions {
  url: string;
  /** Prepended to every key and channel; replicas sharing state use the same one. */
  keyPrefix?: string;
  logger?: Logger;
  /**
   * Longest a heartbeat waits to be recorded with the others of its window
   * (default 1 s; never more than a tenth of the heartbeat or lease TTL).
   * Tests that heartbeat one call at a time lower it.
   */
  heartbeatWindowMs?: number;
}

/** host:port of a Redis URL, without credentials, for error messages. */
function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || "6379"}`;
  } catch {
    return "the configured URL";
  }
}

function joinLabels(labels: string[]): string {
  for (const label of labels) {
    if (label === "" || label.includes("\n")) {
      throw new LeaseStoreError(`label ${JSON.stringify(label)} is empty or contains a newline`);
    }
  }
  return labels.join("\n");
}

function placementArgs(worker: PlacementWorker): (string | number)[] {
  assertCapacity(worker);
  return [worker.poolId, worker.capacity, joinLabels(worker.labels), worker.acceptsWork ? "1" : "0"];
}

export function createRedisLeaseStore(options: RedisLeaseStoreOptions): LeaseStore {
  const logger = options.logger ?? silentLogger();
  const keys = leaseKeys(options.keyPrefix ?? DEFAULT_KEY_PREFIX);
  const prefix = keys.prefix;

  // The commands connection pipelines automatically: every command and script
  // call made in one turn of the event loop goes out in one write and comes
  // back in one read, so a replica busy with many agents pays a socket round
  // trip per turn rather than per call. Order on the connection is unchanged.
  const connect = (role: "commands" | "subscriber") => {
    const connection = new Redis(options.url, {
      lazyConnect: true,
      connectionName: `muster-lease-store-${role}`,
      enableAutoPipelining: role === "commands",
    });
    connection.on("error", (error: Error) => logger.warn({ err: error, role }, "redis connection error"));
    return connection;
  };
  const commands = connect("commands");
  const subscriberConnection = connect("subscriber");
  const run = defineScripts(commands);
  const origin = newOrigin();
  const subscriber = createChannelSubscriber(subscriberConnection, origin, logger);
  const publishBytes = createBytePublisher(commands, subscriber, origin);
  // Heartbeats are recorded in batches, one script call per short window (heartbeat-batch.ts).
  const heartbeats = createHeartbeatBatcher(run, keys, options.heartbeatWindowMs);

  /** The keys a placement decision reads and writes (KEYS[1..5] of acquire and acquire-many). */
  const placementKeys = (poolId: string) => [
    keys.poolHealthy(poolId),
    keys.poolFree(poolId),
    keys.leases,
    keys.leaseExpiry,
    keys.leaseSeq,
  ];

  return {
    async start() {
      try {
        await Promise.all([commands.connect(), subscriberConnection.connect()]);
        // Data of an older version of the store, brought up to this layout (lua/upgrade-3.lua).
        await run("upgrade", [keys.leases, keys.leasedWorkers, keys.layout], [prefix]);
      } catch (error) {
        // No reconnect loop outlives a failed start.
        commands.disconnect();
        subscriberConnection.disconnect();
        throw new LeaseStoreError(`lease store cannot reach Redis at ${describeUrl(options.url)}`, { cause: error });
      }
    },

    async close() {
      await heartbeats.close().catch(() => undefined);
      await Promise.all(
        [commands, subscriberConnection].map(async (connection) => {
          if (connection.status === "end") return;
          if (connection.status === "ready") await connection.quit();
          else connection.disconnect();
        }),
      );
    },

    async attach(worker, sessionId, replicaId, heartbeatTtlMs) {
      await run("attach", [keys.worker(worker.workerId)], [
        prefix,
        worker.workerId,
        ...placementArgs(worker),
        sessionId,
        replicaId,
        heartbeatTtlMs,
      ]);
      heartbeats.attached(worker.workerId, worker.poolId, heartbeatTtlMs);
    },

    async detach(workerId, sessionId) {
      const detached = toBoolean(await run("detach", [keys.worker(workerId)], [prefix, workerId, sessionId]));
      if (detached) heartbeats.forget(workerId);
      return detached;
    },

    heartbeat(workerId, sessionId, heartbeatTtlMs, leaseTtlMs) {
      return heartbeats.heartbeat(workerId, sessionId, heartbeatTtlMs, leaseTtlMs);
    },

    async updateWorker(worker) {
      await run("update-worker", [keys.worker(worker.workerId)], [prefix, worker.workerId, ...placementArgs(worker)]);
      heartbeats.moved(worker.workerId, worker.poolId);
    },

    async removeWorker(workerId) {
      heartbeats.forget(workerId);
      await run(
        "remove-worker",
        [keys.worker(workerId), keys.workerLeases(workerId), keys.leases, keys.leaseExpiry],
        [prefix, workerId],
      );
    },

    async acquire(request) {
      const id = leaseId(request.jobId, request.attempt);
      joinLabels(request.requiredLabels);
      const reply = await run(
        "acquire",
        [...placementKeys(request.poolId), keys.run(request.runId)],
        [
          prefix,
          request.poolId,
          id,
          request.runId,
          request.exclusive ? "1" : "0",
          request.leaseTtlMs,
          RUN_AFFINITY_TTL_MS,
          ...new Set(request.requiredLabels),
        ],
      );
      return toAcquireResult(reply, id);
    },

    async acquireMany(requests) {
      const [first] = requests;
      if (first === undefined) return [];
      assertOnePool(requests);
      const args: (string | number)[] = [prefix, first.poolId, first.leaseTtlMs, RUN_AFFINITY_TTL_MS];
      for (const request of requests) {
        joinLabels(request.requiredLabels);
        const labels = [...new Set(request.requiredLabels)];
        args.push(leaseId(request.jobId, request.attempt), request.runId, request.exclusive ? "1" : "0", labels.length, ...labels);
      }
      const replies = (await run(
        "acquire-many",
        placementKeys(first.poolId),
        args,
      )) as unknown[];
      return replies.map((reply, n) => {
        const request = requests[n]!;
        try {
          return toAcquireResult(reply, leaseId(request.jobId, request.attempt));
        } catch (error) {
          if (error instanceof LeaseHeldError) return "held" as const;
          throw error;
        }
      });
    },

    async release(jobId, attempt) {
      return toBoolean(await run("release", [keys.leases, keys.leaseExpiry], [prefix, leaseId(jobId, attempt)]));
    },

    async lease(jobId, attempt) {
      const id = leaseId(jobId, attempt);
      const workerId = await run("lease", [keys.leases, keys.leaseExpiry], [id]);
      return typeof workerId === "string" ? parseLeaseId(id, workerId) : null;
    },

    async reapExpiredLeases() {
      const reaped: LeaseInfo[] = [];
      for (;;) {
        const batch = toReapedLeases(await run("reap", [keys.leases, keys.leaseExpiry], [prefix, REAP_BATCH]));
        reaped.push(...batch);
        if (batch.length < REAP_BATCH) return reaped;
      }
    },

    async restoreLease(lease, leaseTtlMs) {
      await run(
        "restore",
        [keys.leases, keys.leaseExpiry],
        [prefix, leaseId(lease.jobId, lease.attempt), lease.workerId, leaseTtlMs],
      );
    },

    async workerStatus(workerIds) {
      return toWorkerStatuses(await run("worker-status", [], [prefix, ...workerIds]), workerIds);
    },

    async deliver(delivery) {
      const message = JSON.stringify(delivery);
      return toDelivered(await run("deliver", [keys.worker(delivery.workerId)], [keys.deliveryChannelPrefix, message]));
    },

    async onDelivery(replicaId, handler) {
      return subscriber.subscribe(keys.deliveryChannelPrefix + replicaId, (message) => {
        handler(JSON.parse(message) as Delivery);
      });
    },

    async epoch() {
      return commands.get(keys.epoch);
    },

    async claimEpoch(candidate) {
      await commands.set(keys.epoch, candidate, "NX");
      return (await commands.get(keys.epoch)) ?? candidate;
    },

    async publish(channel, payload) {
      await commands.publish(keys.channel(channel), payload);
    },

    async subscribe(channel, handler) {
      return subscriber.subscribe(keys.channel(channel), handler);
    },

    async publishBytes(channel, payload) {
      await publishBytes(keys.channel(channel), payload);
    },

    async subscribeBytes(channel, handler) {
      return subscriber.subscribeBytes(keys.channel(channel), handler);
    },
  };
}
