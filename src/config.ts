// Server options, compiled once into a validated, fully-resolved config.
// Every option has an environment variable and a matching flag; flags win.
// Defaults work on one machine: the embedded store under ./.muster/data.

import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import path from "node:path";
import { MAX_WORKER_CAPACITY } from "./stores/lease-store.ts";

export interface ServerConfig {
  apiHost: string;
  apiPort: number;
  agentHost: string;
  agentPort: number;
  /** PostgreSQL URL; null: PGlite under dataDir. */
  databaseUrl: string | null;
  /** Postgres schema to keep the tables in (tests isolate with it); null: the default search path. */
  databaseSchema: string | null;
  /** Run the hot statements as named prepared statements (off behind a pooler that cannot keep them). */
  databasePreparedStatements: boolean;
  /** Redis URL; null: the in-process lease store (single replica only). */
  redisUrl: string | null;
  redisKeyPrefix: string;
  dataDir: string;
  builtinWorker: "enabled" | "disabled";
  builtinWorkerCapacity: number;
  replicaId: string;
  heartbeatIntervalMs: number;
  /** A worker whose last heartbeat is older than this is not healthy. */
  heartbeatTtlMs: number;
  /** A lease not renewed for this long is lost (the worker is lost mid-job). */
  leaseTtlMs: number;
  /** An assignment not accepted within this long is released and placed again. */
  assignmentTimeoutMs: number;
  maxChunkBytes: number;
  logLevel: string;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

interface OptionSpec {
  env: string;
  flag: string;
  description: string;
}

const OPTIONS = {
  apiAddr: { env: "MUSTER_API_ADDR", flag: "api-addr", description: "API plane listen address (host:port)" },
  agentAddr: { env: "MUSTER_AGENT_ADDR", flag: "agent-addr", description: "agent plane listen address (host:port)" },
  databaseUrl: { env: "MUSTER_DATABASE_URL", flag: "database-url", description: "PostgreSQL URL; unset: embedded PGlite" },
  databaseSchema: { env: "MUSTER_DATABASE_SCHEMA", flag: "database-schema", description: "Postgres schema for Muster's tables" },
  databasePreparedStatements: {
    env: "MUSTER_DATABASE_PREPARED_STATEMENTS",
    flag: "database-prepared-statements",
    description: "on or off; off behind a pooler in transaction mode without prepared-statement support",
  },
  redisUrl: { env: "MUSTER_REDIS_URL", flag: "redis-url", description: "Redis URL; unset: in-process lease store" },
  redisKeyPrefix: { env: "MUSTER_REDIS_PREFIX", flag: "redis-prefix", description: "prefix of every Redis key" },
  dataDir: { env: "MUSTER_DATA_DIR", flag: "data-dir", description: "embedded database directory" },
  builtinWorker: { env: "MUSTER_BUILTIN_WORKER", flag: "builtin-worker", description: "enabled or disabled" },
  builtinWorkerCapacity: { env: "MUSTER_BUILTIN_WORKER_CAPACITY", flag: "builtin-worker-capacity", description: "concurrent jobs on the built-in worker" },
  replicaId: { env: "MUSTER_REPLICA_ID", flag: "replica-id", description: "this replica's id; default: random" },
  heartbeatIntervalMs: { env: "MUSTER_HEARTBEAT_INTERVAL_MS", flag: "heartbeat-interval-ms", description: "agent heartbeat interval" },
  heartbeatTtlMs: { env: "MUSTER_HEARTBEAT_TTL_MS", flag: "heartbeat-ttl-ms", description: "heartbeat freshness; default 3 intervals" },
  leaseTtlMs: { env: "MUSTER_LEASE_TTL_MS", flag: "lease-ttl-ms", description: "lease lifetime without renewal" },
  assignmentTimeoutMs: { env: "MUSTER_ASSIGNMENT_TIMEOUT_MS", flag: "assignment-timeout-ms", description: "time for an agent to accept an assignment" },
  maxChunkBytes: { env: "MUSTER_MAX_CHUNK_BYTES", flag: "max-chunk-bytes", description: "largest log chunk accepted" },
  logLevel: { env: "MUSTER_LOG_LEVEL", flag: "log-level", description: "trace, debug, info, warn, error" },
} satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;

export function usage(): string {
  const lines = ["Usage: npm start -- [--flag value ...]", "", "Every flag has an environment variable:"];
  for (const spec of Object.values(OPTIONS)) {
    lines.push(`  --${spec.flag.padEnd(26)} ${spec.env.padEnd(32)} ${spec.description}`);
  }
  return lines.join("\n");
}

/** Parses `--flag value` and `--flag=value` pairs. */
export function parseFlags(argv: string[]): Map<string, string> {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) throw new ConfigError(`unexpected argument "${arg}"`);
    const eq = arg.indexOf("=");
    if (eq > 0) {
      flags.set(arg.slice(2, eq), arg.slice(eq + 1));
    } else {
      const value = argv[i + 1];
      if (value === undefined || value.startsWith("--")) throw new ConfigError(`flag ${arg} needs a value`);
      flags.set(arg.slice(2), value);
      i++;
    }
  }
  return flags;
}

export function parseAddress(value: string, what: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(value);
  if (!match) throw new ConfigError(`${what}: "${value}" is not host:port`);
  const host = match[1] ?? (match[2] || "127.0.0.1");
  const port = Number(match[3]);
  if (port > 65535) throw new ConfigError(`${what}: port ${port} is out of range`);
  return { host, port };
}

/** A whole number within [min, max], or a ConfigError naming the option. */
export function integer(value: string, what: string, min: number, max: number): number {
  if (!/^\d+$/.test(value)) throw new ConfigError(`${what}: "${value}" is not a whole number`);
  const n = Number(value);
  if (n < min || n > max) throw new ConfigError(`${what}: ${n} is not between ${min} and ${max}`);
  return n;
}

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const flags = parseFlags(argv);
  for (const flag of flags.keys()) {
    if (!Object.values(OPTIONS).some((spec) => spec.flag === flag)) {
      throw new ConfigError(`unknown flag --${flag}\n\n${usage()}`);
    }
  }
  const get = (name: OptionName): string | undefined => {
    const spec = OPTIONS[name];
    const value = flags.get(spec.flag) ?? env[spec.env];
    return value === undefined || value === "" ? undefined : value;
  };
  const what = (name: OptionName) => `--${OPTIONS[name].flag} / ${OPTIONS[name].env}`;

  const api = parseAddress(get("apiAddr") ?? "127.0.0.1:7070", what("apiAddr"));
  const agent = parseAddress(get("agentAddr") ?? "127.0.0.1:7071", what("agentAddr"));
  const builtinWorker = get("builtinWorker") ?? "enabled";
  if (builtinWorker !== "enabled" && builtinWorker !== "disabled") {
    throw new ConfigError(`${what("builtinWorker")}: "${builtinWorker}" is neither enabled nor disabled`);
  }
  const heartbeatIntervalMs = integer(get("heartbeatIntervalMs") ?? "5000", what("heartbeatIntervalMs"), 50, 600_000);
  const heartbeatTtlMs = integer(
    get("heartbeatTtlMs") ?? String(heartbeatIntervalMs * 3),
    what("heartbeatTtlMs"),
    heartbeatIntervalMs + 1,
    3_600_000,
  );
  const leaseTtlMs = integer(get("leaseTtlMs") ?? "30000", what("leaseTtlMs"), heartbeatIntervalMs + 1, 3_600_000);
  const schema = get("databaseSchema") ?? null;
  if (schema !== null && !/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
    throw new ConfigError(`${what("databaseSchema")}: "${schema}" is not a plain lower-case identifier`);
  }
  const prepared = get("databasePreparedStatements") ?? "on";
  if (prepared !== "on" && prepared !== "off") {
    throw new ConfigError(`${what("databasePreparedStatements")}: "${prepared}" is neither on nor off`);
  }
  return {
    apiHost: api.host,
    apiPort: api.port,
    agentHost: agent.host,
    agentPort: agent.port,
    databaseUrl: get("databaseUrl") ?? null,
    databaseSchema: schema,
    databasePreparedStatements: prepared === "on",
    redisUrl: get("redisUrl") ?? null,
    redisKeyPrefix: get("redisKeyPrefix") ?? "muster:",
    dataDir: path.resolve(get("dataDir") ?? ".muster/data"),
    builtinWorker,
    builtinWorkerCapacity: integer(get("builtinWorkerCapacity") ?? "2", what("builtinWorkerCapacity"), 1, MAX_WORKER_CAPACITY),
    replicaId: get("replicaId") ?? `${hostname()}-${randomUUID().slice(0, 8)}`,
    heartbeatIntervalMs,
    heartbeatTtlMs,
    leaseTtlMs,
    assignmentTimeoutMs: integer(get("assignmentTimeoutMs") ?? "10000", what("assignmentTimeoutMs"), 50, 600_000),
    maxChunkBytes: integer(get("maxChunkBytes") ?? String(256 * 1024), what("maxChunkBytes"), 1024, 4 * 1024 * 1024),
    logLevel: get("logLevel") ?? "info",
  };
}
