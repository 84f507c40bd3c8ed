// Registered workers. Rows are deleted outright: jobs and attempts keep the
// worker's id as history, and a deleted worker's credential stops resolving.

import { randomUUID } from "node:crypto";
import type { WorkerRecord } from "../../domain.ts";
import { PreconditionError, type Database } from "../database.ts";
import { WorkerEntity, type WorkerRow } from "./entities/worker.ts";
import { createBatchedLookup } from "./batched-lookup.ts";
import { toDate, toDateOrNull } from "./raw-values.ts";
import { mapConstraintError, type StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

export function createWorkerRepository(ctx: StoreContext): Database["workers"] {
  // get and byCredentialHash run on every agent call: raw SQL on the driver.
  const workers = ctx.table("workers");
  const byIdSql = `select * from ${workers} where id = $1`;
  // Every Connect looks its credential up; after a restart a whole fleet
  // does at once, so concurrent lookups share one statement.
  const byCredentialHashesSql = `select * from ${workers} where credential_hash = any($1::text[])`;
  const credentialLookup = createBatchedLookup<string, WorkerRecord | null>({
    id: (hash) => hash,
    missing: null,
    fetch: async (hashes) => {
      const { rows } = await ctx.query<WorkerDbRow & { credential_hash: string }>(byCredentialHashesSql, [hashes]);
      return new Map(rows.map((row) => [row.credential_hash, fromDbRow(row)]));
    },
  });
  const selectOne = async (sql: string, param: string): Promise<WorkerRecord | null> => {
    const { rows } = await ctx.query<WorkerDbRow>(sql, [param]);
    const row = rows[0];
    return row === undefined ? null : fromDbRow(row);
  };

  /** Applies `changes` to one worker in one statement and returns the updated row. */
  const updateWorker = async (id: string, changes: Partial<WorkerRow>): Promise<WorkerRecord | null> => {
    if (!isUuid(id)) return null;
    const rows = await ctx
      .fork()
      .qb(WorkerEntity)
      .update(changes)
      .where({ id })
      .returning("*")
      .execute("all");
    const row = rows[0];
    return row ? toWorkerRecord(row as WorkerRow) : null;
  };

  return {
    async create(input) {
      if (!isUuid(input.poolId)) throw new PreconditionError(`worker pool ${input.poolId} does not exist`);
      const record: WorkerRecord = {
        id: randomUUID(),
        space: input.space,
        poolId: input.poolId,
        name: input.name,
        labels: [...input.labels],
        capacity: input.capacity,
        state: "enabled",
        hostname: input.hostname,
        agentVersion: input.agentVersion,
        createdAt: new Date(),
        lastSeenAt: null,
      };
      try {
        await ctx
          .fork()
          .qb(WorkerEntity)
          .insert({
            id: record.id,
            space: record.space,
            pool: record.poolId,
            name: record.name,
            labels: record.labels,
            capacity: record.capacity,
            state: record.state,
            credentialHash: input.credentialHash,
            hostname: record.hostname,
            agentVersion: record.agentVersion,
            createdAt: record.createdAt,
            lastSeenAt: null,
          })
          .execute("run");
      } catch (error) {
        throw mapConstraintError(error, `worker "${input.name}"`);
      }
      return record;
    },

    async get(id) {
      if (!isUuid(id)) return null;
      return selectOne(byIdSql, id);
    },

    async list(space, poolId) {
      if (poolId !== undefined && !isUuid(poolId)) return [];
      const where = poolId === undefined ? { space } : { space, pool: poolId };
      const rows = await ctx.fork().find(WorkerEntity, where, { orderBy: { createdAt: "desc", id: "desc" } });
      return rows.map(toWorkerRecord);
    },

    async byCredentialHash(credentialHash) {
      return credentialLookup(credentialHash);
    },

    async setState(id, state) {
      return updateWorker(id, { state });
    },

    async recordHello(id, hello, now) {
      return updateWorker(id, {
        labels: [...hello.labels],
        capacity: hello.capacity,
        hostname: hello.hostname,
        agentVersion: hello.agentVersion,
        lastSeenAt: now,
      });
    },

    async delete(id) {
      if (!isUuid(id)) return false;
      return (await ctx.fork().nativeDelete(WorkerEntity, { id })) > 0;
    },

    async countInPool(poolId) {
      if (!isUuid(poolId)) return 0;
      return ctx.fork().count(WorkerEntity, { pool: poolId });
    },
  };
}

function toWorkerRecord(row: WorkerRow): WorkerRecord {
  return {
    id: row.id,
    space: row.space,
    poolId: row.pool,
    name: row.name,
    labels: row.labels,
    capacity: row.capacity,
    state: row.state,
    hostname: row.hostname,
    agentVersion: row.agentVersion,
    createdAt: row.createdAt,
    lastSeenAt: row.lastSeenAt ?? null,
  };
}

/** A workers row as the drivers return it (timestamptz as strings; see raw-values.ts). */
interface WorkerDbRow {
  id: string;
  space: string;
  pool_id: string;
  name: string;
  labels: string[];
  capacity: number;
  state: WorkerRecord["state"];
  hostname: string;
  agent_version: string;
  created_at: string | Date;
  last_seen_at: string | Date | null;
}

function fromDbRow(row: WorkerDbRow): WorkerRecord {
  return {
    id: row.id,
    space: row.space,
    poolId: row.pool_id,
    name: row.name,
    labels: row.labels,
    capacity: row.capacity,
    state: row.state,
    hostname: row.hostname,
    agentVersion: row.agent_version,
    createdAt: toDate(row.created_at),
    lastSeenAt: toDateOrNull(row.last_seen_at),
  };
}
