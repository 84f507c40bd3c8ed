// Worker pools, their registration tokens, and the spaces they live in.
//
// Who owns the "one default pool per space" invariant: the partial unique
// index worker_pools_one_default_per_space makes two defaults impossible, and
// every change of the default (setDefault, delete) first locks the space row,
// so concurrent changes queue up instead of tripping over the index.

import { randomUUID } from "node:crypto";
import { LockMode } from "@mikro-orm/core";
import type { SqlEntityManager } from "@mikro-orm/postgresql";
import { DEFAULT_POOL_NAME, type RegistrationTokenRecord, type WorkerPoolRecord } from "../../domain.ts";
import { PreconditionError, type Database } from "../database.ts";
import { RegistrationTokenEntity, type RegistrationTokenRow } from "./entities/registration-token.ts";
import { SpaceEntity } from "./entities/space.ts";
import { TargetEntity } from "./entities/target.ts";
import { WorkerPoolEntity, type WorkerPoolRow } from "./entities/worker-pool.ts";
import { WorkerEntity } from "./entities/worker.ts";
import { mapConstraintError, type StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

const DEFAULT_POOL_DESCRIPTION = "Default worker pool";

export interface PoolRepository {
  ensureSpace: Database["ensureSpace"];
  pools: Database["pools"];
  tokens: Database["tokens"];
}

export function createPoolRepository(ctx: StoreContext): PoolRepository {
  const findPool = async (em: SqlEntityManager, id: string): Promise<WorkerPoolRecord | null> => {
    const row = await em.findOne(WorkerPoolEntity, { id });
    return row ? toPoolRecord(row) : null;
  };

  const defaultPool = async (space: string): Promise<WorkerPoolRecord | null> => {
    const row = await ctx.fork().findOne(WorkerPoolEntity, { space, isDefault: true });
    return row ? toPoolRecord(row) : null;
  };

  /** Locks the space's row for the rest of the transaction: the gate for changing its default pool. */
  const lockSpace = async (tx: SqlEntityManager, space: string): Promise<void> => {
    await tx.findOne(SpaceEntity, { name: space }, { lockMode: LockMode.PESSIMISTIC_WRITE });
  };

  /** The space a pool belongs to, read without loading the pool into the identity map. */
  const spaceOfPool = async (tx: SqlEntityManager, id: string): Promise<string | null> => {
    const row = await tx.qb(WorkerPoolEntity).select(["space"]).where({ id }).execute("get");
    return row ? (row.space as string) : null;
  };

  const ensureSpace = async (space: string): Promise<WorkerPoolRecord> => {
    const existing = await defaultPool(space);
    if (existing) return existing;
    // Both inserts skip on conflict, so two processes creating the same space
    // at once end with one space and one default pool; the loser's inserts
    // wait for the winner's commit and then do nothing.
    await ctx.fork().transactional(async (tx) => {
      const now = new Date();
      await tx.qb(SpaceEntity).insert({ name: space, createdAt: now }).onConflict().ignore().execute("run");
      await tx
        .qb(WorkerPoolEntity)
        .insert({
          id: randomUUID(),
          space,
          name: DEFAULT_POOL_NAME,
          description: DEFAULT_POOL_DESCRIPTION,
          isDefault: true,
          createdAt: now,
          updatedAt: now,
        })
        .onConflict()
        .ignore()
        .execute("run");
    });
    const created = await defaultPool(space);
    if (!created) throw new Error(`space "${space}" has no default worker pool`);
    return created;
  };

  const pools: Database["pools"] = {
    async create(input) {
      await ensureSpace(input.space);
      const now = new Date();
      const record: WorkerPoolRecord = {
        id: randomUUID(),
        space: input.space,
        name: input.name,
        description: input.description,
        isDefault: false,
        createdAt: now,
        updatedAt: now,
        workerCount: 0,
      };
      try {
        await ctx
          .fork()
          .qb(WorkerPoolEntity)
          .insert({
            id: record.id,
            space: record.space,
            name: record.name,
            description: record.description,
            isDefault: false,
            createdAt: now,
            updatedAt: now,
          })
          .execute("run");
      } catch (error) {
        throw mapConstraintError(error, `worker pool "${input.name}" in space "${input.space}"`);
      }
      return record;
    },

    async get(id) {
      if (!isUuid(id)) return null;
      return findPool(ctx.fork(), id);
    },

    async list(space) {
      const rows = await ctx.fork().find(WorkerPoolEntity, { space }, { orderBy: { createdAt: "asc", id: "asc" } });
      return rows.map(toPoolRecord);
    },

    defaultPool,

    async update(id, patch) {
      if (!isUuid(id)) return null;
      const em = ctx.fork();
      const changes: { updatedAt: Date; name?: string; description?: string } = { updatedAt: new Date() };
      if (patch.name !== undefined) changes.name = patch.name;
      if (patch.description !== undefined) changes.description = patch.description;
      let affected: number;
      try {
        affected = await em.nativeUpdate(WorkerPoolEntity, { id }, changes);
      } catch (error) {
        throw mapConstraintError(error, `worker pool "${patch.name}"`);
      }
      return affected === 0 ? null : findPool(em, id);
    },

    async delete(id, options) {
      if (!isUuid(id)) return false;
      return ctx.fork().transactional(async (tx) => {
        const space = await spaceOfPool(tx, id);
        if (space === null) return false;
        await lockSpace(tx, space);
        // Locking the pool row holds off workers registering into it (their
        // foreign-key check needs a share lock on it) until the count below is final.
        const pool = await tx.findOne(WorkerPoolEntity, { id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
        if (!pool) return false;
        if (pool.isDefault) {
          throw new PreconditionError(`worker pool "${pool.name}" is the default pool of space "${space}"`);
        }
        // With the pool row locked FOR UPDATE, no target can start naming it
        // (that takes a KEY SHARE lock on the row), so this list is final.
        const targets = await tx
          .qb(TargetEntity)
          .select(["name"])
          .where({ defaultPool: id })
          .orderBy([{ name: "asc" }])
          .execute("all");
        if (targets.length > 0) {
          if (!options.clearTargetDefaults) {
            const names = targets.map((target) => target.name as string).join(", ");
            const [noun, pronoun] = targets.length === 1 ? ["target", "its"] : ["targets", "their"];
            throw new PreconditionError(
              `worker pool ${pool.name} is the default pool of ${noun} ${names}; clear ${pronoun} default pool or delete with clear_target_defaults`,
            );
          }
          await tx.nativeUpdate(TargetEntity, { defaultPool: id }, { defaultPool: null, updatedAt: new Date() });
        }
        // Counted in a statement of its own, after the lock: the count computed
        // with the locked row used the snapshot taken before waiting for the
        // lock, and misses a worker whose registration committed meanwhile.
        const workers = await tx.count(WorkerEntity, { pool: id });
        if (workers > 0 && !options.force) {
          throw new PreconditionError(`worker pool "${pool.name}" still has ${workers} worker(s)`);
        }
        // Tokens go with the pool (on delete cascade); workers are deleted
        // explicitly so the forced delete reads as what it does.
        await tx.nativeDelete(WorkerEntity, { pool: id });
        await tx.nativeDelete(WorkerPoolEntity, { id });
        return true;
      });
    },

    async setDefault(id) {
      if (!isUuid(id)) return null;
      return ctx.fork().transactional(async (tx) => {
        const space = await spaceOfPool(tx, id);
        if (space === null) return null;
        await lockSpace(tx, space);
        const now = new Date();
        // Clear first, then set: the partial unique index never sees two defaults.
        await tx.nativeUpdate(WorkerPoolEntity, { space, isDefault: true, id: { $ne: id } }, { isDefault: false, updatedAt: now });
        await tx.nativeUpdate(WorkerPoolEntity, { id, isDefault: false }, { isDefault: true, updatedAt: now });
        return findPool(tx, id);
      });
    },
  };

  const tokens: Database["tokens"] = {
    async create(input) {
      const record: RegistrationTokenRecord = {
        id: randomUUID(),
        poolId: input.poolId,
        description: input.description,
        prefix: input.prefix,
        createdAt: new Date(),
        expiresAt: input.expiresAt,
        lastUsedAt: null,
        revokedAt: null,
      };
      if (!isUuid(input.poolId)) throw new PreconditionError(`worker pool ${input.poolId} does not exist`);
      try {
        await ctx
          .fork()
          .qb(RegistrationTokenEntity)
          .insert({
            id: record.id,
            pool: record.poolId,
            description: record.description,
            secretHash: input.secretHash,
            prefix: record.prefix,
            createdAt: record.createdAt,
            expiresAt: record.expiresAt,
            lastUsedAt: null,
            revokedAt: null,
          })
          .execute("run");
      } catch (error) {
        throw mapConstraintError(error, "registration token");
      }
      return record;
    },

    async list(poolId) {
      if (!isUuid(poolId)) return [];
      const rows = await ctx
        .fork()
        .find(RegistrationTokenEntity, { pool: poolId }, { orderBy: { createdAt: "asc", id: "asc" } });
      return rows.map(toTokenRecord);
    },

    async revoke(id, now) {
      if (!isUuid(id)) return null;
      const em = ctx.fork();
      // Only a token not yet revoked takes `now`: revoking twice keeps the first time.
      await em.nativeUpdate(RegistrationTokenEntity, { id, revokedAt: null }, { revokedAt: now });
      const row = await em.findOne(RegistrationTokenEntity, { id });
      return row ? toTokenRecord(row) : null;
    },

    async use(secretHash, now) {
      // One statement: the checks and the last-use stamp cannot be split by a revoke.
      const rows = await ctx
        .fork()
        .qb(RegistrationTokenEntity)
        .update({ lastUsedAt: now })
        .where({
          secretHash,
          revokedAt: null,
          $or: [{ expiresAt: null }, { expiresAt: { $gt: now } }],
        })
        .returning("*")
        .execute("all");
      const row = rows[0];
      return row ? toTokenRecord(row as RegistrationTokenRow) : null;
    },
  };

  return { ensureSpace, pools, tokens };
}

function toPoolRecord(row: WorkerPoolRow): WorkerPoolRecord {
  return {
    id: row.id,
    space: row.space,
    name: row.name,
    description: row.description,
    isDefault: row.isDefault,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
    workerCount: Number(row.workerCount ?? 0),
  };
}

function toTokenRecord(row: RegistrationTokenRow): RegistrationTokenRecord {
  return {
    id: row.id,
    poolId: row.pool,
    description: row.description,
    prefix: row.prefix,
    createdAt: row.createdAt,
    expiresAt: row.expiresAt ?? null,
    lastUsedAt: row.lastUsedAt ?? null,
    revokedAt: row.revokedAt ?? null,
  };
}
