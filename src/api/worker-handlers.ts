// WorkerService: registered workers with their live health and leases.

import type { ServiceImpl } from "@connectrpc/connect";
import { WorkerService } from "../../gen/muster/v1/worker_pb.js";
import type { WorkerRecord, WorkerState } from "../domain.ts";
import type { Logger } from "../logger.ts";
import type { JobPlacer } from "../scheduler/job-placer.ts";
import { retireWorker } from "../scheduler/retire-worker.ts";
import { encodeWorkerMessage } from "../scheduler/worker-messages.ts";
import type { Database } from "../stores/database.ts";
import type { LeaseStore } from "../stores/lease-store.ts";
import { mapErrors } from "./errors.ts";
import { workerToProto } from "./to-proto.ts";
import * as v from "./validate.ts";

export interface WorkerHandlerDeps {
  db: Database;
  leases: LeaseStore;
  placer: JobPlacer;
  logger: Logger;
}

export function workerHandlers({ db, leases, placer, logger }: WorkerHandlerDeps): Partial<ServiceImpl<typeof WorkerService>> {
  async function withLive(worker: WorkerRecord) {
    const live = await leases.workerStatus([worker.id]);
    return workerToProto(worker, live.get(worker.id));
  }

  async function find(rawId: string): Promise<WorkerRecord> {
    const id = v.id(rawId, "id");
    const worker = id === null ? null : await db.workers.get(id);
    if (worker === null) throw v.notFound("worker", rawId);
    return worker;
  }

  async function setState(rawId: string, state: WorkerState) {
    const worker = await find(rawId);
    const updated = await db.workers.setState(worker.id, state);
    if (updated === null) throw v.notFound("worker", rawId);
    await leases.updateWorker({
      workerId: updated.id,
      poolId: updated.poolId,
      capacity: updated.capacity,
      labels: updated.labels,
      acceptsWork: state === "enabled",
    });
    logger.info({ event: "worker_state_changed", workerId: updated.id, state }, `worker ${state}`);
    if (state === "enabled") void placer.drainPool(updated.poolId);
    return { worker: await withLive(updated) };
  }

  return mapErrors(
    {
      async listWorkers(request) {
        const space = v.space(request.space);
        let poolId: string | undefined;
        if (request.workerPoolId !== "") {
          const id = v.id(request.workerPoolId, "worker_pool_id");
          const pool = id === null ? null : await db.pools.get(id);
          if (pool === null || pool.space !== space) throw v.notFound("worker pool", request.workerPoolId);
          poolId = pool.id;
        }
        const workers = await db.workers.list(space, poolId);
        const live = await leases.workerStatus(workers.map((w) => w.id));
        return { workers: workers.map((w) => workerToProto(w, live.get(w.id))) };
      },
      async getWorker(request) {
        return { worker: await withLive(await find(request.id)) };
      },
      enableWorker: (request) => setState(request.id, "enabled"),
      disableWorker: (request) => setState(request.id, "disabled"),
      async drainWorker(request) {
        const { worker } = await setState(request.id, "draining");
        if (request.exitWhenIdle) {
          await leases.deliver({ workerId: worker.id, payload: encodeWorkerMessage({ type: "drain", exitWhenIdle: true }) });
        }
        const busy = worker.activeLeases > 0;
        return { worker, busy, safeToTerminate: !busy };
      },
      async deleteWorker(request) {
        const worker = await find(request.id);
        const live = await db.jobs.liveAttemptsOfWorker(worker.id);
        if (!(await db.workers.delete(worker.id))) throw v.notFound("worker", request.id);
        // The credential no longer resolves; close the stream wherever it is held.
        await retireWorker({ db, leases, placer }, worker, live, "the worker was deleted");
        logger.info({ event: "worker_deleted", workerId: worker.id, name: worker.name, requeued: live.length }, "worker deleted");
        return {};
      },
    } satisfies Partial<ServiceImpl<typeof WorkerService>>,
    logger,
  );
}
