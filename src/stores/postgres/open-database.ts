// Opens the source-of-truth database: MikroORM 7 on PostgreSQL when given a
// url, else on PGlite (Postgres in WASM) persisted under a data directory.
// Either way the committed migrations are applied before anything else runs,
// and the returned Database owns the ORM until close().

import { mkdir } from "node:fs/promises";
import type { MigrateOptions, MigrationInfo, Options } from "@mikro-orm/core";
import { Migrator } from "@mikro-orm/migrations";
import type { SqlEntityManager } from "@mikro-orm/postgresql";
import pg from "pg";
import { silentLogger, type Logger } from "../../logger.ts";
import type { Database } from "../database.ts";
import { entities } from "./entities/index.ts";
import { createJobRepository } from "./job-repository.ts";
import { createLogRepository } from "./log-repository.ts";
import { migrations } from "./migrations/index.ts";
import { createOrmLogger } from "./orm-logger.ts";
import { createPoolRepository } from "./pool-repository.ts";
import { createStoreContext, quoteIdentifier } from "./store-context.ts";
import { createTargetRepository } from "./target-repository.ts";
import { createWorkerRepository } from "./worker-repository.ts";

/** Connections in the PostgreSQL pool unless `poolSize` says otherwise. */
const DEFAULT_POOL_SIZE = 10;
/**
 * Migrating holds one connection for the advisory lock while MikroORM checks
 * its bookkeeping table on another, so the pool needs at least two.
 */
const MIN_POOL_SIZE = 2;
const MIGRATIONS_TABLE = "mikro_orm_migrations";

/**
 * Session settings of the fixed-plan connections, which run the job
 * transitions (job-repository.ts). A named statement there is planned once
 * per connection, generically, and that plan reaches rows through indexes
 * only. Left to choose, PostgreSQL plans a batch of transitions against a
 * jobs table of 20 rows (a new install, a fresh schema) as a scan of the
 * whole table, and a cached plan would go on scanning it whole as it grows
 * to millions; so transitions used to be planned anew on every execution,
 * which cost more than running them. Transitions find every row by its
 * primary key, so nothing is lost by forbidding sequential scans.
 *
 * Hash joins stay allowed: a batch joins its items (a CTE, with no index) to
 * the rows it locked and changed, and with only nested loops each such join
 * compared every item with every other, n x n per join for a batch of n
 * (64 items: 4,032 pairs thrown away per join, half the statement's time).
 * With sequential scans off, a hash join's side on jobs is still read by key.
 */
export const FIXED_PLAN_SETTINGS: Readonly<Record<string, string>> = {
  plan_cache_mode: "force_generic_plan",
  enable_seqscan: "off",
  enable_mergejoin: "off",
};
/** Fixed-plan connections, besides the main pool: transitions go out in batches, a few at a time. */
const FIXED_PLAN_POOL_SIZE = 4;
/** Fixed-plan connections that could not be opened for a passing reason are tried again after this, doubling. */
const FIXED_PLAN_RETRY_MS = 1000;
const FIXED_PLAN_RETRY_MAX_MS = 60_000;

export interface OpenDatabaseOptions {
  /**
   * `postgresql://user@host:port/db` selects PostgreSQL. A `schema` query
   * parameter (`...?schema=t_abc`) works like the `schema` option, which wins
   * if both are given. Without a url the embedded PGlite is used.
   */
  url?: string;
  /** Where PGlite keeps its files (created if missing); `memory://` for a throwaway database. */
  dataDir?: string;
  /** Postgres schema for every table and the migrations table; created if missing. Default: `public`. */
  schema?: string;
  logger?: Logger;
  /** Log every query at debug level. */
  debug?: boolean;
  /** Maximum PostgreSQL connections. Default 10. */
  poolSize?: number;
  /** PostgreSQL: run the store's raw statements as named prepared statements (default true). */
  preparedStatements?: boolean;
  /** First wait before the fixed-plan connections are tried again (tests shorten it). Default 1 s. */
  fixedPlanRetryMs?: number;
}

/**
 * The fixed-plan pool, or why there is none; `passing`: the failure was the
 * connection's (refused, too many connections), not the settings', and
 * trying again later may succeed.
 */
export type FixedPlanPool = { pool: pg.Pool } | { unavailable: string; passing: boolean };

type Driver = "postgresql" | "pglite";

/** The little of a MikroORM instance this module needs, the same for both drivers. */
interface Orm {
  driver: Driver;
  fork(): SqlEntityManager;
  migrate(options?: MigrateOptions): Promise<MigrationInfo[]>;
  close(force?: boolean): Promise<void>;
}

export async function openDatabase(options: OpenDatabaseOptions): Promise<Database> {
  const logger = options.logger ?? silentLogger();
  const { url, schema } = splitSchemaFromUrl(options.url, options.schema);
  const orm = await initOrm({ ...options, url, schema, logger });
  try {
    const applied = await migrate(orm, schema);
    logger.info(
      { event: "database_migrated", driver: orm.driver, schema: schema ?? "public", applied, total: migrations.length },
      applied.length > 0 ? "database migrations applied" : "database schema up to date",
    );
  } catch (error) {
    await orm.close(true);
    throw error;
  }

  const preparedStatements = orm.driver === "postgresql" && options.preparedStatements !== false;
  const fixed = createFixedPlans(logger, options.fixedPlanRetryMs ?? FIXED_PLAN_RETRY_MS);
  if (preparedStatements && url !== undefined) await fixed.open(url);
  const ctx = createStoreContext(orm.fork, schema, { preparedStatements, fixedPlans: fixed });
  const { ensureSpace, pools, tokens } = createPoolRepository(ctx);
  return {
    close: async () => {
      try {
        await orm.close();
      } finally {
        await fixed.close();
      }
    },
    ensureSpace,
    pools,
    tokens,
    targets: createTargetRepository(ctx, ensureSpace),
    workers: createWorkerRepository(ctx),
    jobs: createJobRepository(ctx),
    logs: createLogRepository(ctx),
  };
}

/**
 * The fixed-plan connections of one Database. Opened at start; when that
 * fails for a passing reason (the server refused connections for a moment:
 * too many, or restarting), they are tried again in the background, with a
 * doubling wait, until they open or fail for good, and the transitions move
 * to them from then on. Meanwhile transitions run on the main pool, planned
 * on every execution.
 */
function createFixedPlans(logger: Logger, retryMs: number) {
  let pool: pg.Pool | undefined;
  let timer: NodeJS.Timeout | undefined;
  let attempt: Promise<void> | undefined;
  let closed = false;

  const tryOpen = async (url: string, wait: number): Promise<void> => {
    const opened = await openFixedPlanPool(url, logger);
    if (closed) {
      if ("pool" in opened) await opened.pool.end();
      return;
    }
    if ("pool" in opened) {
      pool = opened.pool;
      if (wait > retryMs) logger.info({ event: "fixed_plans_available" }, "job transitions run on the fixed-plan connections again");
      return;
    }
    const retryInMs = opened.passing ? wait : undefined;
    logger.warn(
      { event: "fixed_plans_unavailable", reason: opened.unavailable, retryInMs },
      opened.passing
        ? "job transitions are planned on every execution, on the main pool, until the fixed-plan connections open"
        : "job transitions will be planned on every execution, on the main pool",
    );
    if (retryInMs === undefined) return;
    timer = setTimeout(() => {
      timer = undefined;
      attempt = tryOpen(url, Math.min(wait * 2, FIXED_PLAN_RETRY_MAX_MS));
    }, retryInMs);
    timer.unref();
  };

  return {
    get pool() {
      return pool;
    },
    async open(url: string) {
      attempt = tryOpen(url, retryMs);
      await attempt;
    },
    async close() {
      closed = true;
      clearTimeout(timer);
      await attempt;
      await pool?.end();
    },
  };
}

/**
 * Opens the fixed-plan connections and checks on one that the server took
 * the settings: a pooler in between (PgBouncer) refuses or drops startup
 * options, and its connections would plan as any other. Without them the
 * transitions run on the main pool, planned on every execution.
 */
export async function openFixedPlanPool(
  url: string,
  logger: Logger,
  settings: Readonly<Record<string, string>> = FIXED_PLAN_SETTINGS,
): Promise<FixedPlanPool> {
  const pool = new pg.Pool({
    connectionString: url,
    max: FIXED_PLAN_POOL_SIZE,
    options: Object.entries(settings)
      .map(([name, value]) => `-c ${name}=${value}`)
      .join(" "),
  });
  // An idle connection the server drops is reported here; the pool replaces it.
  pool.on("error", (error) => logger.warn({ event: "database_connection_lost", pool: "fixed-plan", err: error }, "a database connection was lost"));
  try {
    const names = Object.keys(settings);
    const { rows } = await pool.query<Record<string, string>>({
      text: `select ${names.map((_, n) => `current_setting($${n + 1}) as s${n}`).join(", ")}`,
      values: names,
    });
    const ignored = names.filter((name, n) => rows[0]?.[`s${n}`] !== settings[name]);
    if (ignored.length > 0) {
      await pool.end();
      return { unavailable: `the server did not apply ${ignored.join(", ")} (a connection pooler in between?)`, passing: false };
    }
    return { pool };
  } catch (error) {
    await pool.end().catch(() => {});
    return { unavailable: (error as Error).message, passing: isPassing(error) };
  }
}

/**
 * Failures worth trying again: the connection's own (refused, reset, closed,
 * timed out: no answer from PostgreSQL), and PostgreSQL's SQLSTATE class 08
 * (connection exception), 53 (insufficient resources: too many connections)
 * and 57P03 (cannot connect now: the server is starting). Any other answer
 * from PostgreSQL (a setting it refuses) will be the same next time.
 */
function isPassing(error: unknown): boolean {
  if (!(error instanceof pg.DatabaseError)) return true;
  const code = error.code ?? "";
  return code.startsWith("08") || code.startsWith("53") || code === "57P03";
}

/** Starts MikroORM on the driver the options select; each driver package is loaded only when used. */
async function initOrm(options: OpenDatabaseOptions & { logger: Logger }): Promise<Orm> {
  const debug = options.debug ?? false;
  const common = {
    entities,
    schema: options.schema,
    extensions: [Migrator],
    migrations: {
      migrationsList: migrations,
      tableName: MIGRATIONS_TABLE,
      schema: options.schema,
      // Snapshots belong to create-migration.ts; a server never writes files.
      snapshot: false,
      silent: true,
    },
    debug,
    colors: false,
    loggerFactory: () => createOrmLogger(options.logger, debug),
    // Repositories fork per operation; touching the global EntityManager is a bug.
    allowGlobalContext: false,
  } satisfies Partial<Options>;

  if (options.url !== undefined) {
    const { MikroORM } = await import("@mikro-orm/postgresql");
    const orm = await MikroORM.init({
      ...common,
      clientUrl: options.url,
      pool: { max: Math.max(MIN_POOL_SIZE, options.poolSize ?? DEFAULT_POOL_SIZE) },
    });
    return {
      driver: "postgresql",
      fork: () => orm.em.fork(),
      migrate: (migrateOptions) => orm.migrator.up(migrateOptions),
      close: (force) => orm.close(force),
    };
  }

  if (options.dataDir === undefined) {
    throw new Error("openDatabase needs a url (PostgreSQL) or a dataDir (PGlite; 'memory://' for a throwaway one)");
  }
  if (!options.dataDir.includes("://")) await mkdir(options.dataDir, { recursive: true });
  const { MikroORM } = await import("@mikro-orm/pglite");
  const orm = await MikroORM.init({ ...common, dbName: options.dataDir });
  return {
    driver: "pglite",
    fork: () => orm.em.fork(),
    migrate: (migrateOptions) => orm.migrator.up(migrateOptions),
    close: (force) => orm.close(force),
  };
}

/**
 * Applies pending migrations and returns their names. On PostgreSQL, replicas
 * starting together queue on a transaction-scoped advisory lock (one per
 * schema), so exactly one of them migrates and the others find nothing to do.
 * PGlite is a single process's database and needs no lock.
 */
async function migrate(orm: Orm, schema: string | undefined): Promise<string[]> {
  const em = orm.fork();
  if (schema !== undefined) await em.execute(`create schema if not exists ${quoteIdentifier(schema)}`);
  if (orm.driver === "pglite") {
    return (await orm.migrate()).map((m) => m.name);
  }
  return em.transactional(async (tx) => {
    await tx.execute("select pg_advisory_xact_lock(hashtext(?))", [`muster-migrations:${schema ?? "public"}`]);
    const applied = await orm.migrate({ transaction: tx.getTransactionContext() });
    return applied.map((m) => m.name);
  });
}

/** Takes a `schema` query parameter off a PostgreSQL url; an explicit schema option wins. */
function splitSchemaFromUrl(
  rawUrl: string | undefined,
  explicitSchema: string | undefined,
): { url: string | undefined; schema: string | undefined } {
  if (rawUrl === undefined) return { url: undefined, schema: explicitSchema };
  const parsed = new URL(rawUrl);
  const fromUrl = parsed.searchParams.get("schema") ?? undefined;
  if (fromUrl === undefined) return { url: rawUrl, schema: explicitSchema };
  parsed.searchParams.delete("schema");
  return { url: parsed.toString(), schema: explicitSchema ?? fromUrl };
}
