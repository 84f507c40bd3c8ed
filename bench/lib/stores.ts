// The shared Postgres and Redis of this machine, as the benchmark uses them:
// a schema and a key prefix of its own per run (never FLUSHALL/FLUSHDB, never
// anyone else's schema), and the server-wide counters a figure is read from
// (Redis INFO commands and CPU, pg_stat_database commits). Both servers are
// shared with other engineers' test runs: `background` samples the same
// counters while the benchmark is idle, so a figure can be read net of them.

import { randomBytes } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { Redis } from "ioredis";
import pg from "pg";

export const REDIS_URL = "redis://127.0.0.1:6379";
export const DATABASE = "test";
export const DATABASE_URL = `postgresql://postgres@127.0.0.1:5432/${DATABASE}`;

export function runId(): string {
  return randomBytes(4).toString("hex");
}

export function redisPrefix(system: string, id: string): string {
  return `bench:${system}:${id}:`;
}

export function schemaName(system: string, id: string): string {
  return `bench_${system.replace(/[^a-z0-9]/g, "_")}_${id}`;
}

export async function withPg<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export async function createSchema(schema: string): Promise<void> {
  await withPg((c) => c.query(`create schema "${schema}"`));
}

export async function dropSchema(schema: string): Promise<void> {
  if (!/^bench_[a-z0-9_]+$/.test(schema)) throw new Error(`refusing to drop schema ${schema}: not a benchmark schema`);
  await withPg((c) => c.query(`drop schema if exists "${schema}" cascade`));
}

export function redisClient(): Redis {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  redis.on("error", () => {});
  return redis;
}

export async function deleteKeys(prefix: string): Promise<number> {
  if (!prefix.startsWith("bench:")) throw new Error(`refusing to delete keys under ${prefix}: not a benchmark prefix`);
  const redis = redisClient();
  await redis.connect();
  let deleted = 0;
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}*`, "COUNT", 2000);
      cursor = next;
      const own = keys.filter((key) => key.startsWith(prefix));
      if (own.length > 0) deleted += await redis.unlink(...own);
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
  return deleted;
}

export interface ServerCounters {
  at: number;
  redisCommands: number;
  redisCpuS: number;
  pgCommits: number;
  /** Transaction ids assigned so far: write transactions, counted at once. */
  pgXids: number;
  /** CPU seconds of every PostgreSQL process on this machine, exited backends included. */
  pgCpuS: number;
}

export interface CounterRates {
  redisCommandsPerS: number;
  /** Redis server CPU (user + sys) per wall second. */
  redisCpuShare: number;
  /**
   * From pg_stat_database.xact_commit, which backends flush at most once a
   * second and, when idle, up to 10 s late: read it over long windows only.
   */
  pgCommitsPerS: number;
  /** Write transactions per second (transaction ids assigned): exact at any window. */
  pgWriteXactsPerS: number;
  /** PostgreSQL CPU (user + sys, every process of the local server) per wall second. */
  pgCpuShare: number;
  redisCommands: number;
  pgCommits: number;
}

function infoField(info: string, field: string): number {
  const match = new RegExp(`^${field}:([0-9.]+)`, "m").exec(info);
  return match ? Number(match[1]) : 0;
}

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ: 100 on Linux). */
const CLOCK_TICKS = 100;

/**
 * CPU seconds of the local PostgreSQL server: utime + stime of every process
 * named postgres, plus cutime + cstime (the postmaster's reaped backends, so
 * a connection closed within the window still counts). 0 where /proc is absent.
 */
async function postgresCpuSeconds(): Promise<number> {
  let ticks = 0;
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return 0;
  }
  await Promise.all(
    entries
      .filter((entry) => /^\d+$/.test(entry))
      .map(async (pid) => {
        let stat: string;
        try {
          stat = await readFile(`/proc/${pid}/stat`, "utf8");
        } catch {
          return; // exited meanwhile
        }
        const close = stat.lastIndexOf(")");
        if (stat.slice(stat.indexOf("(") + 1, close) !== "postgres") return;
        // Fields after the command: state is field 3; utime, stime, cutime, cstime are 14-17.
        const fields = stat.slice(close + 2).split(" ");
        ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
      }),
  );
  return ticks / CLOCK_TICKS;
}

export async function readCounters(): Promise<ServerCounters> {
  const redis = redisClient();
  await redis.connect();
  try {
    const [stats, cpu, pgCpuS, commits] = await Promise.all([
      redis.info("stats"),
      redis.info("cpu"),
      postgresCpuSeconds(),
      withPg((c) =>
        c.query(
          "select xact_commit::bigint as n, pg_snapshot_xmax(pg_current_snapshot())::text::bigint as xids from pg_stat_database where datname = $1",
          [DATABASE],
        ),
      ),
    ]);
    return {
      at: Date.now(),
      // This INFO call and the one that ends the window count too: 2 commands, negligible.
      redisCommands: infoField(stats, "total_commands_processed"),
      redisCpuS: infoField(cpu, "used_cpu_sys") + infoField(cpu, "used_cpu_user"),
      pgCommits: Number(commits.rows[0].n),
      pgXids: Number(commits.rows[0].xids),
      pgCpuS,
    };
  } finally {
    redis.disconnect();
  }
}

export function rates(from: ServerCounters, to: ServerCounters): CounterRates {
  const seconds = Math.max(0.001, (to.at - from.at) / 1000);
  return {
    redisCommandsPerS: (to.redisCommands - from.redisCommands) / seconds,
    redisCpuShare: (to.redisCpuS - from.redisCpuS) / seconds,
    pgCommitsPerS: (to.pgCommits - from.pgCommits) / seconds,
    pgWriteXactsPerS: (to.pgXids - from.pgXids) / seconds,
    pgCpuShare: (to.pgCpuS - from.pgCpuS) / seconds,
    redisCommands: to.redisCommands - from.redisCommands,
    pgCommits: to.pgCommits - from.pgCommits,
  };
}

/** The counters' rates while this benchmark does nothing: other users of the shared servers. */
export async function background(ms = 1000): Promise<CounterRates> {
  const from = await readCounters();
  await new Promise((resolve) => setTimeout(resolve, ms));
  return rates(from, await readCounters());
}
