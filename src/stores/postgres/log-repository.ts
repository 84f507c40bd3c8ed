// Log chunks. Appends are multi-row INSERT ... ON CONFLICT DO NOTHING
// statements with bound parameters (bytea sent as binary Buffers), so a batch
// costs one round trip and a chunk the agent re-sends after a reconnect is
// skipped rather than duplicated. Raw SQL on the driver: this is the hottest
// insert path, and MikroORM's QueryBuilder costs more CPU than the insert.
//
// Appends are also grouped across callers: at most APPEND_STATEMENTS_IN_FLIGHT
// statements run at a time, and the appends that arrive meanwhile (every agent
// session of the replica sends its chunks here) go out together in the next
// statement, one row per chunk. Under load the number of statements, and of
// commits Postgres must flush, follows the number of round trips rather than
// the number of chunks; when idle an append starts at once. A grouped
// statement that fails on its rows' values is retried caller by caller, so one
// caller's bad batch fails only that caller; any other failure (Postgres
// unreachable) fails the whole group at once.

import type { LogChunkRecord } from "../../domain.ts";
import type { Database } from "../database.ts";
import { createBatchedLookup } from "./batched-lookup.ts";
import { placeholders, toBuffer, toBytes, toDate } from "./raw-values.ts";
import type { StoreContext } from "./store-context.ts";
import { isUuid } from "./uuid.ts";

/** Rows per INSERT statement: 6 parameters a row, well under Postgres's 65,535 per statement. */
const APPEND_BATCH_ROWS = 1000;
const COLUMNS_PER_ROW = 6;
/** Appends grouped into one statement stop adding callers at this many bytes of chunk data. */
const APPEND_GROUP_BYTES = 8 * 1024 * 1024;
/** INSERT statements of appends in flight at once (each holds a pooled connection). */
const APPEND_STATEMENTS_IN_FLIGHT = 2;

interface PendingAppend {
  records: LogChunkRecord[];
  bytes: number;
  resolve: (inserted: number) => void;
  reject: (error: unknown) => void;
}

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
  // Sessions ask for an attempt's stored log when they adopt it; after a
  // restart every agent's Hello does at once, so concurrent lookups share one
  // statement (each attempt still one index probe).
  const maxSeqManySql =
    `select t.n::int as n, (select max(c.seq) from ${chunks} c where c.job_id = t.job_id and c.attempt = t.attempt) as seq ` +
    `from unnest($1::uuid[], $2::int[]) with ordinality as t(job_id, attempt, n)`;
  const maxSeqLookup = createBatchedLookup<{ jobId: string; attempt: number }, number>({
    id: ({ jobId, attempt }) => `${jobId}/${attempt}`,
    missing: 0,
    fetch: async (keys) => {
      const { rows } = await ctx.query<{ n: number; seq: number | null }>(maxSeqManySql, [keys.map((k) => k.jobId), keys.map((k) => k.attempt)]);
      const answers = new Map<string, number>();
      for (const row of rows) {
        const key = keys[row.n - 1]!;
        answers.set(`${key.jobId}/${key.attempt}`, row.seq ?? 0);
      }
      return answers;
    },
  });
  /** The INSERT text for n rows, built once per row count (returning the keys inserted when asked to). */
  const insertSql = new Map<string, string>();
  const insertStatement = (rows: number, returning: boolean): string => {
    const cacheKey = `${rows}${returning ? "r" : ""}`;
    let sql = insertSql.get(cacheKey);
    if (sql === undefined) {
      const values: string[] = [];
      for (let row = 0; row < rows; row++) values.push(placeholders(row * COLUMNS_PER_ROW, COLUMNS_PER_ROW));
      sql = `insert into ${chunks} (job_id, attempt, seq, stream, data, time) values ${values.join(", ")} on conflict do nothing`;
      if (returning) sql += " returning job_id, attempt, seq";
      if (insertSql.size < 128) insertSql.set(cacheKey, sql);
    }
    return sql;
  };

  const paramsOf = (records: readonly LogChunkRecord[]): unknown[] => {
    const params: unknown[] = [];
    for (const chunk of records) params.push(chunk.jobId, chunk.attempt, chunk.seq, chunk.stream, toBuffer(chunk.data), chunk.time);
    return params;
  };

  /** One caller's chunks on their own, APPEND_BATCH_ROWS a statement. */
  const appendAlone = async (records: LogChunkRecord[]): Promise<number> => {
    let inserted = 0;
    for (let start = 0; start < records.length; start += APPEND_BATCH_ROWS) {
      const batch = records.slice(start, start + APPEND_BATCH_ROWS);
      const result = await ctx.query(insertStatement(batch.length, false), paramsOf(batch));
      inserted += result.affectedRows ?? 0;
    }
    return inserted;
  };

  /** Several callers' chunks in one statement; each learns how many of its own were new. */
  const appendGroup = async (group: PendingAppend[]): Promise<number[]> => {
    const records = group.flatMap((pending) => pending.records);
    const { rows } = await ctx.query<{ job_id: string; attempt: number; seq: number }>(insertStatement(records.length, true), paramsOf(records));
    const inserted = new Set(rows.map((row) => `${row.job_id.toLowerCase()}/${row.attempt}/${row.seq}`));
    // A key two callers both sent was inserted once: it counts for the first.
    return group.map((pending) => {
      let count = 0;
      for (const chunk of pending.records) if (inserted.delete(`${chunk.jobId.toLowerCase()}/${chunk.attempt}/${chunk.seq}`)) count++;
      return count;
    });
  };

  const queue: PendingAppend[] = [];
  let inFlight = 0;
  const pump = () => {
    while (inFlight < APPEND_STATEMENTS_IN_FLIGHT && queue.length > 0) {
      const group = [queue.shift()!];
      let rows = group[0].records.length;
      let bytes = group[0].bytes;
      while (queue.length > 0 && rows + queue[0].records.length <= APPEND_BATCH_ROWS && bytes + queue[0].bytes <= APPEND_GROUP_BYTES) {
        const next = queue.shift()!;
        rows += next.records.length;
        bytes += next.bytes;
        group.push(next);
      }
      inFlight++;
      void run(group).finally(() => {
        inFlight--;
        pump();
      });
    }
  };
  const run = async (group: PendingAppend[]): Promise<void> => {
    if (group.length === 1) {
      const [only] = group;
      await appendAlone(only.records).then(only.resolve, only.reject);
      return;
    }
    let counts: number[];
    try {
      counts = await appendGroup(group);
    } catch (error) {
      if (!isRowError(error)) {
        // Postgres is unreachable or refused the statement as such: the same for everyone.
        for (const pending of group) pending.reject(error);
        return;
      }
      // Each caller on its own: one caller's bad rows must not fail the others.
      for (const pending of group) await appendAlone(pending.records).then(pending.resolve, pending.reject);
      return;
    }
    group.forEach((pending, i) => pending.resolve(counts[i]));
  };

  return {
    append(records) {
      if (records.length === 0) return Promise.resolve(0);
      let bytes = 0;
      for (const chunk of records) bytes += chunk.data.byteLength;
      return new Promise<number>((resolve, reject) => {
        queue.push({ records, bytes, resolve, reject });
        pump();
      });
    },

    async read(jobId, attempt, fromSeq, limit) {
      if (!isUuid(jobId)) return [];
      const { rows } = await ctx.query<LogChunkDbRow>(readSql, [jobId, attempt, fromSeq, limit]);
      return rows.map(toLogChunkRecord);
    },

    async maxSeq(jobId, attempt) {
      // Nothing is stored under an id or attempt Postgres could not hold (and
      // one such lookup must not fail the statement it would share).
      if (!isUuid(jobId) || !Number.isInteger(attempt) || attempt < 0 || attempt > 2 ** 31 - 1) return 0;
      return maxSeqLookup({ jobId, attempt });
    },
  };
}

/** An error about the rows' values (SQLSTATE class 22, data exception, or 23, integrity constraint violation). */
function isRowError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^2[23][0-9A-Z]{3}$/.test(code);
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
