// Test support for the real PostgreSQL at 127.0.0.1:5432, database `test`,
// shared by every test run: each test gets its own schema (`t_<label>_<random>`)
// and drops it (CASCADE) afterwards, never touching anyone else's tables.
//
// Choosing the schema: openDatabase takes it either as its `schema` option or
// as a `?schema=` parameter on the url; `testDatabaseUrl(schema)` builds the
// latter. Server processes get the plain url plus MUSTER_DATABASE_SCHEMA.

import { randomBytes } from "node:crypto";
import { MikroORM } from "@mikro-orm/postgresql";
import type { Logger } from "../../src/logger.ts";
import type { Database } from "../../src/stores/database.ts";
import { openDatabase } from "../../src/stores/postgres/open-database.ts";
import { quoteIdentifier } from "../../src/stores/postgres/store-context.ts";

export const TEST_DATABASE_URL = process.env.MUSTER_TEST_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/test";

const START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/** The test database's url; with a schema, as `?schema=<schema>` (which openDatabase understands). */
export function testDatabaseUrl(schema?: string): string {
  if (schema === undefined) return TEST_DATABASE_URL;
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set("schema", schema);
  return url.toString();
}

/** A schema name no other test uses, e.g. "t_jobs_3f9a1c2b7d". */
export function uniqueSchemaName(label = "t"): string {
  const safe = label.toLowerCase().replace(/[^a-z0-9_]/g, "_").slice(0, 30);
  return `t_${safe}_${randomBytes(5).toString("hex")}`;
}

export interface TestSchema {
  /** The schema's name; pass it as openDatabase's `schema` (or MUSTER_DATABASE_SCHEMA). */
  schema: string;
  /** The test database's url, without the schema. */
  url: string;
  /** Drops the schema and everything in it. */
  drop(): Promise<void>;
}

export interface TestDatabase {
  db: Database;
  schema: string;
  url: string;
  /** Closes the database and drops its schema. */
  cleanup(): Promise<void>;
}

/** Runs statements on a short-lived connection to the test database. */
async function onAdminConnection(statements: string[]): Promise<void> {
  let orm: MikroORM;
  try {
    orm = await MikroORM.init({
      clientUrl: TEST_DATABASE_URL,
      entities: [],
      discovery: { warnWhenNoEntities: false },
      pool: { min: 0, max: 1 },
      allowGlobalContext: true,
    });
    await orm.em.getConnection().execute("select 1");
  } catch (error) {
    throw new Error(`PostgreSQL not reachable at ${TEST_DATABASE_URL} — start it with: ${START_HINT}`, {
      cause: error,
    });
  }
  try {
    for (const statement of statements) await orm.em.getConnection().execute(statement);
  } finally {
    await orm.close(true);
  }
}

/** Fails with instructions when PostgreSQL is not running; call it in `before`. */
export async function requirePostgres(): Promise<void> {
  await onAdminConnection([]);
}

/**
 * Creates an empty schema for a test. Whoever opens the database on it (a
 * server process, or createTestDatabase) applies the migrations.
 */
export async function createTestSchema(label = "t"): Promise<TestSchema> {
  const schema = uniqueSchemaName(label);
  await onAdminConnection([`create schema ${quoteIdentifier(schema)}`]);
  return {
    schema,
    url: TEST_DATABASE_URL,
    drop: () => dropTestSchema(schema),
  };
}

export async function dropTestSchema(schema: string): Promise<void> {
  const literal = `'${schema.replaceAll("'", "''")}'`;
  await onAdminConnection([
    // A connection left holding locks in this test's schema (a server that did
    // not close cleanly) would make the drop wait forever: end those sessions
    // first. Only sessions locking objects of this schema are touched.
    `select pg_terminate_backend(l.pid) from pg_locks l
       join pg_class c on c.oid = l.relation
       join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = ${literal} and l.pid <> pg_backend_pid()`,
    `drop schema if exists ${quoteIdentifier(schema)} cascade`,
  ]);
}

/** A migrated Database in a fresh schema of the test database. */
export async function createTestDatabase(options: { label?: string; logger?: Logger } = {}): Promise<TestDatabase> {
  const { schema, url, drop } = await createTestSchema(options.label);
  let db: Database;
  try {
    db = await openDatabase({ url, schema, logger: options.logger });
  } catch (error) {
    await drop();
    throw error;
  }
  return {
    db,
    schema,
    url,
    async cleanup() {
      await db.close();
      await drop();
    },
  };
}
