// TargetService: cloud targets and the default pool their steps run in.

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { TargetSchema, TargetService, type Target } from "../../gen/muster/v1/target_pb.js";
import type { TargetRecord } from "../domain.ts";
import type { Logger } from "../logger.ts";
import type { ConfigCache } from "../scheduler/config-cache.ts";
import type { Database } from "../stores/database.ts";
import { mapErrors } from "./errors.ts";
import * as v from "./validate.ts";

export interface TargetHandlerDeps {
  db: Database;
  cache: ConfigCache;
  logger: Logger;
}

function targetToProto(target: TargetRecord): Target {
  return create(TargetSchema, {
    id: target.id,
    space: target.space,
    name: target.name,
    description: target.description,
    defaultWorkerPoolId: target.defaultPoolId ?? "",
    createTime: timestampFromDate(target.createdAt),
    updateTime: timestampFromDate(target.updatedAt),
  });
}

export function targetHandlers({ db, cache, logger }: TargetHandlerDeps): Partial<ServiceImpl<typeof TargetService>> {
  async function find(rawId: string): Promise<TargetRecord> {
    const id = v.id(rawId, "id");
    const target = id === null ? null : await db.targets.get(id);
    if (target === null) throw v.notFound("target", rawId);
    return target;
  }

  /** A pool id given for a target in `space`: "" clears it; anything else must be a pool of that space. */
  async function defaultPool(raw: string, space: string): Promise<string | null> {
    if (raw === "") return null;
    const id = v.id(raw, "default_worker_pool_id");
    const pool = id === null ? null : await db.pools.get(id);
    if (pool === null || pool.space !== space) throw v.notFound("worker pool", raw);
    return pool.id;
  }

  return mapErrors(
    {
      async createTarget(request) {
        const space = v.space(request.space);
        const name = v.poolName(request.name);
        await db.ensureSpace(space);
        const target = await db.targets.create({
          space,
          name,
          description: v.description(request.description),
          defaultPoolId: await defaultPool(request.defaultWorkerPoolId, space),
        });
        logger.info({ event: "target_created", targetId: target.id, space, name, defaultPoolId: target.defaultPoolId }, "target created");
        return { target: targetToProto(target) };
      },
      async getTarget(request) {
        return { target: targetToProto(await find(request.id)) };
      },
      async listTargets(request) {
        return { targets: (await db.targets.list(v.space(request.space))).map(targetToProto) };
      },
      async updateTarget(request) {
        const existing = await find(request.id);
        const patch: { name?: string; description?: string; defaultPoolId?: string | null } = {};
        if (request.name !== undefined) patch.name = v.poolName(request.name);
        if (request.description !== undefined) patch.description = v.description(request.description);
        if (request.defaultWorkerPoolId !== undefined) patch.defaultPoolId = await defaultPool(request.defaultWorkerPoolId, existing.space);
        const updated = await db.targets.update(existing.id, patch);
        cache.invalidate();
        if (updated === null) throw v.notFound("target", request.id);
        return { target: targetToProto(updated) };
      },
      async deleteTarget(request) {
        const existing = await find(request.id);
        if (!(await db.targets.delete(existing.id))) throw v.notFound("target", request.id);
        cache.invalidate();
        logger.info({ event: "target_deleted", targetId: existing.id, name: existing.name }, "target deleted");
        return {};
      },
    } satisfies Partial<ServiceImpl<typeof TargetService>>,
    logger,
  );
}
