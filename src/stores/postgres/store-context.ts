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
   */
  query<R = Record<string, unknown>>(sql: string, params: readonly unknown[]): Promise<RawResult<R>>;
}

export function createStoreContext(fork: () => SqlEntityManager, schema: string | undefined): StoreContext {
  const prefix = schema === undefined ? "" : `${quoteIdentifier(schema)}.`;
  // The driver's connection and the ORM's logger are one object each for the
  // ORM's lifetime; reaching them needs an EntityManager once, not per statement.
  let connection: AbstractSqlConnection | undefined;
  let logger: OrmLogger | undefined;
  const query = async <R>(sql: string, params: readonly unknown[]): Promise<RawResult<R>> => {
    if (connection === undefined || logger === undefined) {
      const em = fork();
      connection = em.getConnection("write");
      logger = em.config.getLogger();
    }
    const conn = connection;
    await conn.ensureConnection();
    const compiled = CompiledQuery.raw(sql, params as unknown[]);
    const started = Date.now();
    let result;
    try {
      result = await conn.getClient().executeQuery<R>(compiled);
    } catch (error) {
      // Failures are logged like MikroORM's own: always, at error level.
      logger.logQuery({ query: sql, took: Date.now() - started, level: "error" });
      throw error;
    }
    const affected = result.numAffectedRows;
    const affectedRows = affected === undefined ? undefined : Number(affected);
    if (logger.isEnabled("query")) {
      logger.logQuery({ query: sql, took: Date.now() - started, results: result.rows.length, affected: affectedRows });
    }
    return { rows: result.rows as R[], affectedRows };
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
