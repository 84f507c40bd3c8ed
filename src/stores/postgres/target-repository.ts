// Cloud targets.
//
// A target's default pool must be a pool of the target's own space. The
// foreign key only says the pool exists, so create and update check the space
// themselves, in the same transaction as the write, after taking a KEY SHARE
// lock on the pool row: that is the lock the foreign-key check would take
// anyway, taken first, so a concurrent pool delete (which holds the pool row
// FOR UPDATE and then touches targets) waits for us or we for it, never both.

import { randomUUID } from "node:crypto";
import type { SqlEntityManager } from "@mikro-orm/postgresql";
import type { TargetRecord } from "../../domain.ts";
import { PreconditionError, type Database } from "../database.ts";
import { TargetEntity, type TargetRow } from "./entities/target.ts";
import { mapConstraintError, type StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

export function createTargetRepository(ctx: StoreContext, ensureSpace: Database["ensureSpace"]): Database["targets"] {
  /** PreconditionError unless `poolId` is a pool of `space`; locks the pool row against deletion until commit. */
  const checkDefaultPool = async (tx: SqlEntityManager, space: string, poolId: string): Promise<void> => {
    const missing = () => new PreconditionError(`worker pool ${poolId} is not a pool of space "${space}"`);
    if (!isUuid(poolId)) throw missing();
    const row = await tx.execute<{ space: string }[]>(
      `select space from ${ctx.table("worker_pools")} where id = ? for key share`,
      [poolId],
    );
    if (row[0]?.space !== space) throw missing();
  };

  const findTarget = async (em: SqlEntityManager, id: string): Promise<TargetRecord | null> => {
    const row = await em.qb(TargetEntity).select("*").where({ id }).execute("get");
    return row ? toTargetRecord(row as TargetRow) : null;
  };

  return {
    async create(input) {
      // The space row must exist for the foreign key; like pools.create, this
      // also gives a new space its default pool.
      await ensureSpace(input.space);
      const now = new Date();
      const record: TargetRecord = {
        id: randomUUID(),
        space: input.space,
        name: input.name,
        description: input.description,
        defaultPoolId: input.defaultPoolId,
        createdAt: now,
        updatedAt: now,
      };
      try {
        await ctx.fork().transactional(async (tx) => {
          if (record.defaultPoolId !== null) await checkDefaultPool(tx, record.space, record.defaultPoolId);
          await tx
            .qb(TargetEntity)
            .insert({
              id: record.id,
              space: record.space,
              name: record.name,
              description: record.description,
              defaultPool: record.defaultPoolId,
              createdAt: now,
              updatedAt: now,
            })
            .execute("run");
        });
      } catch (error) {
        throw mapConstraintError(error, `target "${input.name}" in space "${input.space}"`);
      }
      return record;
    },

    async get(id) {
      if (!isUuid(id)) return null;
      return findTarget(ctx.fork(), id);
    },

    async list(space) {
      const rows = await ctx
        .fork()
        .qb(TargetEntity)
        .select("*")
        .where({ space })
        .orderBy([{ name: "asc" }, { id: "asc" }])
        .execute("all");
      return (rows as TargetRow[]).map(toTargetRecord);
    },

    async update(id, patch) {
      if (!isUuid(id)) return null;
      try {
        return await ctx.fork().transactional(async (tx) => {
          // A target never changes space, so reading it unlocked is enough.
          const current = await tx.qb(TargetEntity).select(["space"]).where({ id }).execute("get");
          if (!current) return null;
          const changes: Partial<TargetRow> = { updatedAt: new Date() };
          if (patch.name !== undefined) changes.name = patch.name;
          if (patch.description !== undefined) changes.description = patch.description;
          if (patch.defaultPoolId !== undefined) {
            if (patch.defaultPoolId !== null) await checkDefaultPool(tx, current.space as string, patch.defaultPoolId);
            changes.defaultPool = patch.defaultPoolId;
          }
          const rows = await tx.qb(TargetEntity).update(changes).where({ id }).returning("*").execute("all");
          const row = rows[0];
          return row ? toTargetRecord(row as TargetRow) : null;
        });
      } catch (error) {
        throw mapConstraintError(error, `target "${patch.name ?? id}"`);
      }
    },

    async delete(id) {
      if (!isUuid(id)) return false;
      return (await ctx.fork().nativeDelete(TargetEntity, { id })) > 0;
    },
  };
}

function toTargetRecord(row: TargetRow): TargetRecord {
  return {
    id: row.id,
    space: row.space,
    name: row.name,
    description: row.description,
    defaultPoolId: row.defaultPool ?? null,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  };
}
