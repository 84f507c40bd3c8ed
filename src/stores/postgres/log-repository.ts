// Log chunks. Appends are multi-row INSERT ... ON CONFLICT DO NOTHING
// statements, so a batch costs one round trip and a chunk the agent re-sends
// after a reconnect is skipped rather than duplicated.

import type { LogChunkRecord } from "../../domain.ts";
import type { Database } from "../database.ts";
import { LogChunkEntity, type LogChunkRow } from "./entities/log-chunk.ts";
import type { StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

/** Rows per INSERT statement; keeps each statement's SQL text to a few megabytes at most. */
const APPEND_BATCH_ROWS = 1000;

export function createLogRepository(ctx: StoreContext): Database["logs"] {
  return {
    async append(chunks) {
      if (chunks.length === 0) return 0;
      const em = ctx.fork();
      let inserted = 0;
      for (let start = 0; start < chunks.length; start += APPEND_BATCH_ROWS) {
        const rows = chunks.slice(start, start + APPEND_BATCH_ROWS).map(toLogChunkRow);
        const result = await em.qb(LogChunkEntity).insert(rows).onConflict().ignore().execute("run");
        inserted += result.affectedRows;
      }
      return inserted;
    },

    async read(jobId, attempt, fromSeq, limit) {
      if (!isUuid(jobId)) return [];
      const rows = await ctx
        .fork()
        .qb(LogChunkEntity)
        .select("*")
        .where({ jobId, attempt, seq: { $gte: fromSeq } })
        .orderBy({ seq: "asc" })
        .limit(limit)
        .execute("all");
      return (rows as LogChunkRow[]).map(toLogChunkRecord);
    },

    async maxSeq(jobId, attempt) {
      if (!isUuid(jobId)) return 0;
      const row = await ctx
        .fork()
        .qb(LogChunkEntity)
        .select(["seq"])
        .where({ jobId, attempt })
        .orderBy({ seq: "desc" })
        .limit(1)
        .execute("get");
      return row ? row.seq : 0;
    },
  };
}

function toLogChunkRow(chunk: LogChunkRecord): LogChunkRow {
  return {
    jobId: chunk.jobId,
    attempt: chunk.attempt,
    seq: chunk.seq,
    stream: chunk.stream,
    data: Buffer.from(chunk.data.buffer, chunk.data.byteOffset, chunk.data.byteLength),
    time: chunk.time,
  };
}

function toLogChunkRecord(row: LogChunkRow): LogChunkRecord {
  const data = row.data as Uint8Array;
  return {
    jobId: row.jobId,
    attempt: row.attempt,
    seq: row.seq,
    stream: row.stream,
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    time: row.time,
  };
}
