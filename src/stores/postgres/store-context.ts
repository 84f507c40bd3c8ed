// What every repository gets from openDatabase: a way to fork a fresh
// EntityManager per operation (never the global one) and the schema the
// tables live in, for the few statements written as raw SQL.

import {
  ForeignKeyConstraintViolationException,
  UniqueConstraintViolationException,
} from "@mikro-orm/core";
import type { SqlEntityManager } from "@mikro-orm/postgresql";
import { AlreadyExistsError, PreconditionError } from "../database.ts";

export interface StoreContext {
  /** A fresh EntityManager for one operation. */
  fork(): SqlEntityManager;
  /** A table name, quoted and qualified with the configured schema, for raw SQL. */
  table(name: string): string;
}

export function createStoreContext(fork: () => SqlEntityManager, schema: string | undefined): StoreContext {
  const prefix = schema === undefined ? "" : `${quoteIdentifier(schema)}.`;
  return { fork, table: (name) => prefix + quoteIdentifier(name) };
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
