// What every repository gets from openDatabase: a way to fork a fresh
// EntityManager per operation (never the global one), the schema the tables
// live in, and a cheap way to run raw parameterized SQL for the hot paths.

import {
  ForeignKeyConstraintViolationException,
  UniqueConstraintViolationException,
  type Logger as OrmLogger,
} from "@mikro-orm/core";
import type { AbstractSqlConnection, SqlEntityManager } from "@mikro-orm/postgresql";
import { CompiledQuery } from "kysely";
import { AlreadyExistsError, PreconditionError } from "../database.ts";

export interface RawResult<R> {
  rows: R[];
  /** Rows an INSERT, UPDATE or DELETE touched; undefined for other statements. */
  affectedRows: number | undefined;
}

export interface StoreContext {
  /** A fresh EntityManager for one operation. */
  fork(): SqlEntityManager;
  /** A table name, quoted and qualified with the configured schema, for raw SQL. */
  table(name: string): string;
  /**
   * Runs one statement with bound parameters (`$1`, `$2`, ...) on a pooled
   * connection, outside any transaction (a single statement is atomic on its
   * own). Rows come back as the driver parsed them: timestamptz as strings
   * (MikroORM's type overrides), bigint as strings on pg, bytea as Buffer on pg
   * and Uint8Array on PGlite. Driver errors (with their SQLSTATE `code`) pass
   * through unconverted, as from QueryBuilder.execute().
   *
   * `prepared: false` runs the statement unnamed even where statements are
   * prepared: PostgreSQL then plans it for its parameters on every
   * execution, where a prepared statement settles on one generic plan.
   *
   * `fixedPlan: true` runs it as a named statement on the fixed-plan
   * connections where there are some (see StoreContextOptions.fixedPlans):
   * planned once per connection, through indexes only. For statements that
   * reach every row they touch by an index key, and whose generic plan would
   * otherwise depend on how big the table was when it was made. Without
   * fixed-plan connections, `prepared` decides.
   */
  query<R = Record<string, unknown>>(sql: string, params: readonly unknown[], options?: QueryOptions): Promise<RawResult<R>>;
}

export interface QueryOptions {
  prepared?: boolean;
  fixedPlan?: boolean;
}

/**
 * A pg pool as far as query() uses it (MikroORM's, or the fixed-plan one):
 * a named statement is parsed once per connection and then only bound and
 * executed.
 */
export interface NativePool {
  query(config: { name?: string; text: string; values: unknown[] }): Promise<{ rows: unknown[]; rowCount: number | null; command: string }>;
}

/**
 * Distinct statement texts run as named (prepared) statements on PostgreSQL.
 * The hot statements are a few dozen texts (batch statements carry their
 * rows in one JSON parameter, so a batch's size does not change its text);
 * texts beyond this many run unnamed, so an unexpected variety of statements
 * cannot grow every connection's plan cache without bound.
 */
const MAX_NAMED_STATEMENTS = 200;
const COUNTED_COMMANDS = new Set(["INSERT", "UPDATE", "DELETE", "MERGE"]);
/** SQLSTATE of "cached plan must not change result type" (feature_not_supported). */
const CACHED_PLAN_CHANGED = "0A000";

export interface StoreContextOptions {
  /**
   * PostgreSQL (pg): run statements on the driver's pool as named prepared
   * statements, which spares the server parsing and, once it settles on a
   * generic plan, planning them again on every execution. PGlite: off.
   */
  preparedStatements?: boolean;
  /**
   * Connections whose sessions plan a named statement once, generically,
   * without sequential scans, hash or merge joins (open-database.ts), for
   * queries with `fixedPlan: true`, read at each query: they may come
   * later than the store (open-database.ts retries them). Only with
   * preparedStatements.
   */
  fixedPlans?: { readonly pool: NativePool | undefined };
}

export function createStoreContext(fork: () => SqlEntityManager, schema: string | undefined, options: StoreContextOptions = {}): StoreContext {
  const prefix = schema === undefined ? "" : `${quoteIdentifier(schema)}.`;
  // The driver's connection and the ORM's logger are one object each for the
  // ORM's lifetime; reaching them needs an EntityManager once, not per statement.
  let connection: AbstractSqlConnection | undefined;
  let logger: OrmLogger | undefined;
  let pool: NativePool | undefined;
  const names = new Map<string, string>();
  let generation = 0;
  const nameOf = (sql: string): string | undefined => {
    let name = names.get(sql);
    if (name === undefined && names.size < MAX_NAMED_STATEMENTS) {
      name = `muster_${generation}_${names.size + 1}`;
      names.set(sql, name);
    }
    return name;
  };

  const execute = async (conn: AbstractSqlConnection, sql: string, params: readonly unknown[], queryOptions: QueryOptions | undefined) => {
    if (options.preparedStatements) {
      const fixed = queryOptions?.fixedPlan === true ? options.fixedPlans?.pool : undefined;
      const prepared = fixed !== undefined || (queryOptions?.prepared ?? true);
      const target = fixed ?? (pool ??= await (conn as unknown as { getNativeClient(): Promise<NativePool> }).getNativeClient());
      let result;
      try {
        result = await target.query({ name: prepared ? nameOf(sql) : undefined, text: sql, values: params as unknown[] });
      } catch (error) {
        if ((error as { code?: unknown }).code !== CACHED_PLAN_CHANGED) throw error;
        // A migration (another replica's, in a rolling upgrade) changed a
        // table under statements prepared before it; PostgreSQL refuses to
        // run them again. Every statement gets a fresh name, prepared anew.
        generation++;
        names.clear();
        result = await target.query({ name: nameOf(sql), text: sql, values: params as unknown[] });
      }
      return {
        rows: result.rows,
        affectedRows: COUNTED_COMMANDS.has(result.command) ? (result.rowCount ?? 0) : undefined,
      };
    }
    await conn.ensureConnection();
    const result = await conn.getClient().executeQuery(CompiledQuery.raw(sql, params as unknown[]));
    const affected = result.numAffectedRows;
    return { rows: result.rows, affectedRows: affected === undefined ? undefined : Number(affected) };
  };

  const query = async <R>(sql: string, params: readonly unknown[], queryOptions?: QueryOptions): Promise<RawResult<R>> => {
    if (connection === undefined || logger === undefined) {
      const em = fork();
      connection = em.getConnection("write");
      logger = em.config.getLogger();
    }
    const started = Date.now();
    let result;
    try {
      result = await execute(connection, sql, params, queryOptions);
    } catch (error) {
      // Failures are logged like MikroORM's own: always, at error level.
      logger.logQuery({ query: sql, took: Date.now() - started, level: "error" });
      throw error;
    }
    if (logger.isEnabled("query")) {
      logger.logQuery({ query: sql, took: Date.now() - started, results: result.rows.length, affected: result.affectedRows });
    }
    return { rows: result.rows as R[], affectedRows: result.affectedRows };
  };
  return { fork, table: (name) => prefix + quoteIdentifier(name), query };
}

export function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** SQLSTATE codes of the constraint violations repositories translate. */
const UNIQUE_VIOLATION = "23505";
const FOREIGN_KEY_VIOLATION = "23503";

/**
 * Converts the constraint violations a repository expects into the contract's
 * errors: a unique violation means the name (or hash) is taken, a foreign-key
 * violation means what the row points at is gone. Anything else passes through.
 * The EntityManager raises MikroORM's exceptions; QueryBuilder.execute() lets
 * the driver's error (pg or PGlite, with its SQLSTATE `code`) through as is.
 */
export function mapConstraintError(error: unknown, what: string): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  if (error instanceof UniqueConstraintViolationException || code === UNIQUE_VIOLATION) {
    return new AlreadyExistsError(`${what} already exists`, { cause: error });
  }
  if (error instanceof ForeignKeyConstraintViolationException || code === FOREIGN_KEY_VIOLATION) {
    return new PreconditionError(`${what} refers to something that no longer exists`, { cause: error });
  }
  return error;
}
