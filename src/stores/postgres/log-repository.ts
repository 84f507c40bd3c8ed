// Log chunks. Appends are multi-row INSERT ... ON CONFLICT DO NOTHING
// statements with bound parameters (bytea sent as binary Buffers), so a batch
// costs one round trip and a chunk the agent re-sends after a reconnect is
// skipped rather than duplicated. Raw SQL on the driver: this is the hottest
// insert path, and MikroORM's QueryBuilder costs more CPU than the insert.

import type { LogChunkRecord } from "../../domain.ts";
import type { Database } from "../database.ts";
import { placeholders, toBuffer, toBytes, toDate } from "./raw-values.ts";
import type { StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

/** Rows per INSERT statement: 6 parameters a row, well under Postgres's 65,535 per statement. */
const APPEND_BATCH_ROWS = 1000;
const COLUMNS_PER_ROW = 6;

interface LogChunkDbRow {
  job_id: string;
  attempt: number;
  seq: number;
  stream: LogChunkRecord["stream"];
  data: Uint8Array;
  time: string | Date;
}

export function createLogRepository(ctx: StoreContext): Database["logs"] {
  const chunks = ctx.table("log_chunks");
  const readSql = `select * from ${chunks} where job_id = $1 and attempt = $2 and seq >= $3 order by seq asc limit $4`;
  const maxSeqSql = `select max(seq) as seq from ${chunks} where job_id = $1 and attempt = $2`;
  /** The INSERT text for n rows, built once per batch size. */
  const insertSql = new Map<number, string>();
  const insertStatement = (rows: number): string => {
    let sql = insertSql.get(rows);
    if (sql === undefined) {
      const values: string[] = [];
      for (let row = 0; row < rows; row++) values.push(placeholders(row * COLUMNS_PER_ROW, COLUMNS_PER_ROW));
      sql = `insert into ${chunks} (job_id, attempt, seq, stream, data, time) values ${values.join(", ")} on conflict do nothing`;
      if (insertSql.size < 64) insertSql.set(rows, sql);
    }
    return sql;
  };

  return {
    async append(records) {
      let inserted = 0;
      for (let start = 0; start < records.length; start += APPEND_BATCH_ROWS) {
        const batch = records.slice(start, start + APPEND_BATCH_ROWS);
        const params: unknown[] = [];
        for (const chunk of batch) {
          params.push(chunk.jobId, chunk.attempt, chunk.seq, chunk.stream, toBuffer(chunk.data), chunk.time);
        }
        const result = await ctx.query(insertStatement(batch.length), params);
        inserted += result.affectedRows ?? 0;
      }
      return inserted;
    },

    async read(jobId, attempt, fromSeq, limit) {
      if (!isUuid(jobId)) return [];
      const { rows } = await ctx.query<LogChunkDbRow>(readSql, [jobId, attempt, fromSeq, limit]);
      return rows.map(toLogChunkRecord);
    },

    async maxSeq(jobId, attempt) {
      if (!isUuid(jobId)) return 0;
      const { rows } = await ctx.query<{ seq: number | null }>(maxSeqSql, [jobId, attempt]);
      return rows[0]?.seq ?? 0;
    },
  };
}

function toLogChunkRecord(row: LogChunkDbRow): LogChunkRecord {
  return {
    jobId: row.job_id,
    attempt: row.attempt,
    seq: row.seq,
    stream: row.stream,
    data: toBytes(row.data),
    time: toDate(row.time),
  };
}
