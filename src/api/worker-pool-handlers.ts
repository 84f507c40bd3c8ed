// WorkerPoolService: pools and their registration tokens.

import type { ServiceImpl } from "@connectrpc/connect";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { WorkerHealth } from "../../gen/muster/v1/worker_pb.js";
import { WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { newSecret } from "../auth/secrets.ts";
import type { Logger } from "../logger.ts";
import type { ConfigCache } from "../scheduler/config-cache.ts";
import type { JobPlacer } from "../scheduler/job-placer.ts";
import { retireWorker } from "../scheduler/retire-worker.ts";
import type { Database } from "../stores/database.ts";
import type { LeaseStore } from "../stores/lease-store.ts";
import { mapErrors } from "./errors.ts";
import type { WorkerPoolRecord } from "../domain.ts";
import { poolToProto, tokenToProto, workerHealth } from "./to-proto.ts";
import * as v from "./validate.ts";

export interface WorkerPoolHandlerDeps {
  db: Database;
  cache: ConfigCache;
  leases: LeaseStore;
  placer: JobPlacer;
  logger: Logger;
}

export function workerPoolHandlers({ db, cache, leases, placer, logger }: WorkerPoolHandlerDeps): Partial<ServiceImpl<typeof WorkerPoolService>> {
  /** The pool with its live figures: healthy workers, free capacity, queue depth and oldest wait. */
  async function withStats(record: WorkerPoolRecord) {
    const [workers, queue] = await Promise.all([db.workers.list(record.space, record.id), db.jobs.queueStats(record.id)]);
    const live = await leases.workerStatus(workers.map((w) => w.id));
    let healthyWorkers = 0;
    let freeCapacity = 0;
    for (const worker of workers) {
      if (workerHealth(worker, live.get(worker.id)) !== WorkerHealth.HEALTHY) continue;
      healthyWorkers++;
      freeCapacity += Math.max(0, worker.capacity - (live.get(worker.id)?.activeLeases ?? 0));
    }
    const message = poolToProto(record);
    message.healthyWorkers = healthyWorkers;
    message.freeCapacity = freeCapacity;
    message.queuedJobs = queue.queued;
    message.oldestQueuedTime = queue.oldestQueuedAt === null ? undefined : timestampFromDate(queue.oldestQueuedAt);
    return message;
  }

  async function pool(rawId: string, field = "id") {
    const id = v.id(rawId, field);
    const found = id === null ? null : await db.pools.get(id);
    if (found === null) throw v.notFound("worker pool", rawId);
    return found;
  }

  async function issueToken(poolId: string, description: string, expiresAt: Date | null) {
    if (expiresAt !== null && expiresAt.getTime() <= Date.now()) throw v.invalid("expire_time must be in the future");
    const secret = newSecret("registration");
    const token = await db.tokens.create({ poolId, description, secretHash: secret.hash, prefix: secret.prefix, expiresAt });
    logger.info({ event: "registration_token_created", tokenId: token.id, poolId, prefix: token.prefix }, "registration token created");
    return { secret: secret.secret, token };
  }

  return mapErrors(
    {
      async createWorkerPool(request) {
        const space = v.space(request.space);
        const name = v.poolName(request.name);
        const description = v.description(request.description);
        await db.ensureSpace(space);
        const created = await db.pools.create({ space, name, description });
        const { secret, token } = await issueToken(created.id, "created with the pool", null);
        logger.info({ event: "worker_pool_created", poolId: created.id, space, name }, "worker pool created");
        return { workerPool: poolToProto(created), registrationToken: secret, registrationTokenInfo: tokenToProto(token) };
      },
      async getWorkerPool(request) {
        return { workerPool: await withStats(await pool(request.id)) };
      },
      async listWorkerPools(request) {
        const space = v.space(request.space);
        await db.ensureSpace(space);
        return { workerPools: await Promise.all((await db.pools.list(space)).map(withStats)) };
      },
      async updateWorkerPool(request) {
        const existing = await pool(request.id);
        const patch: { name?: string; description?: string } = {};
        if (request.name !== undefined) patch.name = v.poolName(request.name);
        if (request.description !== undefined) patch.description = v.description(request.description);
        const updated = await db.pools.update(existing.id, patch);
        cache.invalidate();
        if (updated === null) throw v.notFound("worker pool", request.id);
        return { workerPool: poolToProto(updated) };
      },
      async deleteWorkerPool(request) {
        const existing = await pool(request.id);
        const workers = request.force ? await db.workers.list(existing.space, existing.id) : [];
        const live = await Promise.all(workers.map((worker) => db.jobs.liveAttemptsOfWorker(worker.id)));
        const deleted = await db.pools.delete(existing.id, { force: request.force, clearTargetDefaults: request.clearTargetDefaults });
        cache.invalidate();
        if (!deleted) throw v.notFound("worker pool", request.id);
        for (const [i, worker] of workers.entries()) {
          await retireWorker({ db, leases, placer }, worker, live[i], `worker pool ${existing.name} was deleted`);
        }
        await placer.drainPool(existing.id);
        logger.info({ event: "worker_pool_deleted", poolId: existing.id, name: existing.name, workersDeleted: workers.length }, "worker pool deleted");
        return {};
      },
      async setDefaultWorkerPool(request) {
        const existing = await pool(request.id);
        const updated = await db.pools.setDefault(existing.id);
        cache.invalidate();
        if (updated === null) throw v.notFound("worker pool", request.id);
        logger.info({ event: "default_pool_changed", poolId: updated.id, space: updated.space }, "default worker pool changed");
        return { workerPool: poolToProto(updated) };
      },
      async createRegistrationToken(request) {
        const existing = await pool(request.workerPoolId, "worker_pool_id");
        const { secret, token } = await issueToken(
          existing.id,
          v.description(request.description),
          request.expireTime === undefined ? null : timestampDate(request.expireTime),
        );
        return { token: secret, registrationToken: tokenToProto(token) };
      },
      async listRegistrationTokens(request) {
        const existing = await pool(request.workerPoolId, "worker_pool_id");
        return { registrationTokens: (await db.tokens.list(existing.id)).map(tokenToProto) };
      },
      async revokeRegistrationToken(request) {
        const id = v.id(request.id, "id");
        const revoked = id === null ? null : await db.tokens.revoke(id, new Date());
        if (revoked === null) throw v.notFound("registration token", request.id);
        logger.info({ event: "registration_token_revoked", tokenId: revoked.id, poolId: revoked.poolId }, "registration token revoked");
        return { registrationToken: tokenToProto(revoked) };
      },
    } satisfies Partial<ServiceImpl<typeof WorkerPoolService>>,
    logger,
  );
}
