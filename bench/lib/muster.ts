// A Muster server for one benchmark run: its own Postgres schema and Redis
// prefix, started as a process (src/main.ts with the probe preloaded), a pool
// with a registration token, and clean-up of all of it.

import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { startChild, type Child } from "./child.ts";
import { createSchema, DATABASE_URL, deleteKeys, dropSchema, REDIS_URL, redisPrefix, runId, schemaName } from "./stores.ts";

export interface MusterEnv {
  schema: string;
  prefix: string;
  dataDir: string;
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

export async function musterEnv(overrides: Record<string, string> = {}): Promise<MusterEnv> {
  const id = runId();
  const schema = schemaName("muster", id);
  const prefix = redisPrefix("muster", id);
  const dataDir = await mkdtemp(path.join(tmpdir(), "muster-bench-"));
  await createSchema(schema);
  return {
    schema,
    prefix,
    dataDir,
    env: {
      MUSTER_DATABASE_URL: DATABASE_URL,
      MUSTER_DATABASE_SCHEMA: schema,
      MUSTER_REDIS_URL: REDIS_URL,
      MUSTER_REDIS_PREFIX: prefix,
      MUSTER_DATA_DIR: dataDir,
      MUSTER_BUILTIN_WORKER: "disabled",
      // Per-job info lines (4 a job) are left out of throughput runs; see BENCHMARKS.md.
      MUSTER_LOG_LEVEL: "warn",
      ...overrides,
    },
    async cleanup() {
      await dropSchema(schema);
      await deleteKeys(prefix);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export interface MusterServer {
  child: Child;
  api: string;
  agent: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/**
 * The Node flags `npm start` gives the server (package.json "start":
 * `node <flags> src/main.ts`), so the benchmark runs the server as shipped.
 */
function serverNodeFlags(): string[] {
  const pkg = JSON.parse(readFileSync(path.join(import.meta.dirname, "../../package.json"), "utf8")) as { scripts: { start: string } };
  const words = pkg.scripts.start.split(/\s+/);
  return words.slice(1, words.indexOf("src/main.ts"));
}

export async function startMuster(env: MusterEnv, options: { agentPort?: number; nodeArgs?: string[]; name?: string } = {}): Promise<MusterServer> {
  const child = startChild({
    name: options.name ?? "muster-server",
    script: "src/main.ts",
    args: ["--api-addr", "127.0.0.1:0", "--agent-addr", `127.0.0.1:${options.agentPort ?? 0}`],
    env: env.env,
    nodeArgs: [...serverNodeFlags(), ...(options.nodeArgs ?? [])],
  });
  // The start-up hint goes to stderr whatever the log level (the runs use "warn").
  const line = await child.waitForLine((l) => l.startsWith("Muster API plane on "), 60_000);
  const match = /^Muster API plane on (\S+), agent plane on (\S+)\.$/.exec(line);
  if (match === null) throw new Error(`cannot read the server's addresses from: ${line}`);
  return { child, api: match[1], agent: match[2] };
}

export function poolClient(api: string): Client<typeof WorkerPoolService> {
  return createClient(WorkerPoolService, createGrpcTransport({ baseUrl: `http://${api}` }));
}

export async function createPool(api: string, name: string): Promise<{ poolId: string; token: string }> {
  const created = await poolClient(api).createWorkerPool({ name, description: "benchmark pool" });
  return { poolId: created.workerPool!.id, token: created.registrationToken };
}
