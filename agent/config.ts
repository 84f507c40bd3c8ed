// Agent options, compiled once into a validated, fully-resolved config.
// Every option has a flag and most have an environment variable; flags win
// over the environment. Defaults work on one machine against `npm start`.

import { hostname as osHostname } from "node:os";
import path from "node:path";
import packageJson from "../package.json" with { type: "json" };
import { ConfigError, integer, parseAddress, parseFlags } from "../src/config.ts";

export { ConfigError };

export const AGENT_VERSION: string = packageJson.version;

/** The same bounds the server checks on Register and Hello, so a bad value fails here, not in a retry loop. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const LABEL = /^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,127}$/;
const MAX_LABELS = 64;

export interface AgentConfig {
  /** Agent plane address as host:port (plaintext gRPC). */
  url: string;
  /** Registration token, used only when no worker credential is stored yet. */
  token: string | null;
  name: string;
  labels: string[];
  capacity: number;
  stateDir: string;
  /** Each attempt runs in <workDir>/<job id>-<attempt>. */
  workDir: string;
  logFlushMs: number;
  /** Upper bound on a log chunk's data; the server's Welcome.max_chunk_bytes may lower it. */
  maxChunkBytes: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  /** Output or a finish report unacknowledged this long is sent again on the same stream. */
  ackTimeoutMs: number;
  /** Grace between interrupt and kill when an assignment times out (and for cancels that name none). */
  killGraceMs: number;
  hostname: string;
  agentVersion: string;
  logLevel: string;
}

interface OptionSpec {
  flag: string;
  env: string | null;
  description: string;
}

const OPTIONS = {
  url: { flag: "url", env: "MUSTER_URL", description: "agent plane address host:port (default 127.0.0.1:7071)" },
  token: { flag: "token", env: "MUSTER_TOKEN", description: "registration token, used once" },
  name: { flag: "name", env: "MUSTER_NAME", description: "worker name (default: hostname)" },
  labels: { flag: "labels", env: "MUSTER_LABELS", description: 'comma-separated labels, e.g. "linux,docker,region=eu"' },
  capacity: { flag: "capacity", env: "MUSTER_CAPACITY", description: "concurrent jobs, 1..1000 (default 1)" },
  stateDir: { flag: "state-dir", env: "MUSTER_STATE_DIR", description: "where the worker credential is kept (default ./.muster/agent)" },
  workDir: { flag: "work-dir", env: "MUSTER_WORK_DIR", description: "job working directories (default <state-dir>/work)" },
  logFlushMs: { flag: "log-flush-ms", env: "MUSTER_LOG_FLUSH_MS", description: "send buffered output at least this often (default 50)" },
  maxChunkBytes: { flag: "max-chunk-bytes", env: "MUSTER_MAX_CHUNK_BYTES", description: "largest log chunk (default 65536)" },
  backoffInitialMs: { flag: "backoff-initial-ms", env: "MUSTER_BACKOFF_INITIAL_MS", description: "first reconnect delay ceiling; later ones grow to half the time disconnected (default 250)" },
  backoffMaxMs: { flag: "backoff-max-ms", env: "MUSTER_BACKOFF_MAX_MS", description: "largest reconnect delay (default 10000)" },
  ackTimeoutMs: { flag: "ack-timeout-ms", env: "MUSTER_ACK_TIMEOUT_MS", description: "resend unacknowledged output after this long (default 5000)" },
  killGraceMs: { flag: "kill-grace-ms", env: "MUSTER_KILL_GRACE_MS", description: "interrupt-to-kill grace on timeout (default 10000)" },
  logLevel: { flag: "log-level", env: "MUSTER_LOG_LEVEL", description: "trace, debug, info, warn, error (default info)" },
} satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;

export function agentUsage(): string {
  const lines = ["Usage: npm run agent -- [--flag value ...]", "", "Flags (environment variable in brackets; flags win):"];
  for (const spec of Object.values(OPTIONS) as OptionSpec[]) {
    lines.push(`  --${spec.flag.padEnd(20)} ${(spec.env ?? "").padEnd(26)} ${spec.description}`);
  }
  lines.push("", "Exit codes: 0 stopped cleanly, 1 internal error, 2 bad configuration or state, 3 credential rejected.");
  return lines.join("\n");
}

/** "linux, docker,,region=eu" -> ["docker", "linux", "region=eu"]; throws on a label the server would refuse. */
export function parseLabels(value: string, what: string): string[] {
  const labels = [...new Set(value.split(",").map((label) => label.trim()).filter((label) => label !== ""))];
  if (labels.length > MAX_LABELS) throw new ConfigError(`${what}: at most ${MAX_LABELS} labels`);
  for (const label of labels) {
    if (!LABEL.test(label)) {
      throw new ConfigError(`${what}: label "${label}" must be 1 to 128 letters, digits or _.:/=-, starting with a letter or digit`);
    }
  }
  return labels.sort();
}

/** Accepts host:port, optionally prefixed with grpc:// or http:// (plaintext only). */
function parseUrl(value: string, what: string): string {
  const stripped = value.replace(/^(grpc|http):\/\//, "").replace(/\/$/, "");
  if (/^[a-z]+:\/\//i.test(stripped)) throw new ConfigError(`${what}: "${value}": only plaintext host:port is supported`);
  const { host, port } = parseAddress(stripped, what);
  if (port === 0) throw new ConfigError(`${what}: port 0 is not an address to connect to`);
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

export function loadAgentConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const flags = parseFlags(argv);
  const specs = Object.values(OPTIONS) as OptionSpec[];
  for (const flag of flags.keys()) {
    if (!specs.some((spec) => spec.flag === flag)) throw new ConfigError(`unknown flag --${flag}\n\n${agentUsage()}`);
  }
  const get = (name: OptionName): string | undefined => {
    const spec: OptionSpec = OPTIONS[name];
    const value = flags.get(spec.flag) ?? (spec.env === null ? undefined : env[spec.env]);
    return value === undefined || value.trim() === "" ? undefined : value.trim();
  };
  const what = (name: OptionName) => {
    const spec: OptionSpec = OPTIONS[name];
    return spec.env === null ? `--${spec.flag}` : `--${spec.flag} / ${spec.env}`;
  };

  const host = osHostname();
  const name = get("name") ?? host;
  if (!NAME.test(name)) {
    throw new ConfigError(`${what("name")}: "${name}" must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit`);
  }
  const stateDir = path.resolve(get("stateDir") ?? ".muster/agent");
  const backoffInitialMs = integer(get("backoffInitialMs") ?? "250", what("backoffInitialMs"), 1, 60_000);
  return {
    url: parseUrl(get("url") ?? "127.0.0.1:7071", what("url")),
    token: get("token") ?? null,
    name,
    labels: parseLabels(get("labels") ?? "", what("labels")),
    capacity: integer(get("capacity") ?? "1", what("capacity"), 1, 1000),
    stateDir,
    workDir: path.resolve(get("workDir") ?? path.join(stateDir, "work")),
    logFlushMs: integer(get("logFlushMs") ?? "50", what("logFlushMs"), 1, 60_000),
    maxChunkBytes: integer(get("maxChunkBytes") ?? "65536", what("maxChunkBytes"), 1024, 4 * 1024 * 1024),
    backoffInitialMs,
    backoffMaxMs: integer(get("backoffMaxMs") ?? "10000", what("backoffMaxMs"), backoffInitialMs, 600_000),
    ackTimeoutMs: integer(get("ackTimeoutMs") ?? "5000", what("ackTimeoutMs"), 50, 600_000),
    killGraceMs: integer(get("killGraceMs") ?? "10000", what("killGraceMs"), 0, 3_600_000),
    hostname: host,
    agentVersion: AGENT_VERSION,
    logLevel: get("logLevel") ?? "info",
  };
}
