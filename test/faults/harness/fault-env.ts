// One fault scenario's world: its own Postgres schema and Redis key prefix,
// a server process with shrunk timings, agents that each reach the agent
// plane through their own TCP proxy (so one can be partitioned alone),
// optionally the server's Postgres behind a proxy too, API clients, and the
// invariant checker's view of it all. close() stops every process and proxy
// and drops the schema and the keys.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService, JobState, type Job, type SubmitJobRequest } from "../../../gen/muster/v1/job_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { SubmitJobRequestSchema } from "../../../gen/muster/v1/job_pb.js";
import { WorkerHealth, WorkerService, type Worker } from "../../../gen/muster/v1/worker_pb.js";
import { WorkerPoolService } from "../../../gen/muster/v1/worker_pool_pb.js";
import { createTestSchema, TEST_DATABASE_URL, type TestSchema } from "../../support/postgres.ts";
import { deleteKeysWithPrefix, REDIS_URL, requireRedis, uniqueKeyPrefix } from "../../support/redis.ts";
import { startProcess, type LogLine, type ManagedProcess } from "../../support/processes.ts";
import { checkInvariants, waitForInvariants, type InvariantReport, type InvariantTarget } from "./invariants.ts";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.ts";

export { JobState, WorkerHealth };

/** Shrunk timings: a lease is lost within ~2 s, heartbeats every 200 ms. */
export const TIMINGS = {
  heartbeatIntervalMs: 200,
  leaseTtlMs: 2000,
  assignmentTimeoutMs: 1500,
} as const;

export const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT]);

export interface FaultEnvOptions {
  label: string;
  /** Put the server's Postgres connections through a proxy. */
  proxyPostgres?: boolean;
  /** Redis URL for the server (a private redis-server); default the shared one, isolated by prefix. */
  redisUrl?: string;
  /** Extra server environment (overrides). */
  serverEnv?: Record<string, string>;
}

export interface AgentHandle {
  name: string;
  proc: ManagedProcess;
  /** Between this agent and the agent plane. */
  proxy: TcpProxy;
  stateDir: string;
}

export interface FaultEnv {
  readonly target: InvariantTarget;
  readonly schema: TestSchema;
  readonly dir: string;
  readonly server: ManagedProcess & { api: string; agentPort: number };
  readonly pgProxy: TcpProxy | null;
  readonly pools: Client<typeof WorkerPoolService>;
  readonly workers: Client<typeof WorkerService>;
  readonly jobs: Client<typeof JobService>;
  createPool(name: string): Promise<{ poolId: string; token: string }>;
  startAgent(name: string, token: string | null, args?: string[]): Promise<AgentHandle>;
  /** Starts the server process again on the same schema and prefix (after a kill); agent proxies follow it. */
  restartServer(): Promise<void>;
  submit(poolId: string, script: string, extra?: Partial<MessageInitShape<typeof SubmitJobRequestSchema>>): Promise<Job>;
  job(id: string): Promise<Job>;
  waitJob(id: string, what: string, predicate: (job: Job) => boolean, timeoutMs?: number): Promise<Job>;
  waitEnded(id: string, timeoutMs?: number): Promise<Job>;
  worker(poolId: string, name: string): Promise<Worker | undefined>;
  waitHealthy(poolId: string, names: string[], timeoutMs?: number): Promise<void>;
  readLog(jobId: string, attempt?: number): Promise<{ seqs: bigint[]; data: Buffer }>;
  /** Waits until the attempt has stored at least `chunks` log chunks. */
  waitUntilLogged(jobId: string, attempt: number, chunks: number, timeoutMs?: number): Promise<void>;
  check(): Promise<InvariantReport>;
  assertInvariants(options?: { timeoutMs?: number; allowUnfinished?: boolean }): Promise<InvariantReport>;
  close(): Promise<void>;
}

export async function waitUntil<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
    await sleep(everyMs);
  }
}

export function pgUrlOnPort(port: number): string {
  const url = new URL(TEST_DATABASE_URL);
  url.port = String(port);
  return url.toString();
}

export async function createFaultEnv(options: FaultEnvOptions): Promise<FaultEnv> {
  if (options.redisUrl === undefined) await requireRedis();
  const schema = await createTestSchema(options.label);
  const prefix = uniqueKeyPrefix(options.label);
  const dir = await mkdtemp(path.join(tmpdir(), `muster-fault-${options.label}-`));
  const redisUrl = options.redisUrl ?? REDIS_URL;
  const agents: AgentHandle[] = [];
  let pgProxy: TcpProxy | null = null;
  if (options.proxyPostgres === true) pgProxy = await startTcpProxy(Number(new URL(TEST_DATABASE_URL).port || 5432));

  const serverEnv: Record<string, string> = {
    MUSTER_DATABASE_URL: pgProxy === null ? TEST_DATABASE_URL : pgUrlOnPort(pgProxy.port),
    MUSTER_DATABASE_SCHEMA: schema.schema,
    MUSTER_REDIS_URL: redisUrl,
    MUSTER_REDIS_PREFIX: prefix,
    MUSTER_HEARTBEAT_INTERVAL_MS: String(TIMINGS.heartbeatIntervalMs),
    MUSTER_LEASE_TTL_MS: String(TIMINGS.leaseTtlMs),
    MUSTER_ASSIGNMENT_TIMEOUT_MS: String(TIMINGS.assignmentTimeoutMs),
    MUSTER_BUILTIN_WORKER: "disabled",
    MUSTER_DATA_DIR: path.join(dir, "data"),
    ...options.serverEnv,
  };

  async function launchServer() {
    const proc = startProcess("src/main.ts", ["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"], serverEnv);
    const started = await proc.waitFor((line) => line.event === "server_started");
    const agentPort = Number(String(started.agent).split(":").pop());
    return Object.assign(proc, { api: String(started.api), agentPort });
  }

  let server = await launchServer();
  let pools!: Client<typeof WorkerPoolService>;
  let workers!: Client<typeof WorkerService>;
  let jobs!: Client<typeof JobService>;
  function connectClients() {
    const transport = createGrpcTransport({ baseUrl: `http://${server.api}` });
    pools = createClient(WorkerPoolService, transport);
    workers = createClient(WorkerService, transport);
    jobs = createClient(JobService, transport);
  }
  connectClients();

  const target: InvariantTarget = { databaseUrl: TEST_DATABASE_URL, schema: schema.schema, redisUrl, redisPrefix: prefix };

  const env: FaultEnv = {
    target,
    schema,
    dir,
    get server() {
      return server;
    },
    pgProxy,
    get pools() {
      return pools;
    },
    get workers() {
      return workers;
    },
    get jobs() {
      return jobs;
    },
    async createPool(name) {
      const created = await pools.createWorkerPool({ name, description: `fault scenario ${options.label}` });
      return { poolId: created.workerPool!.id, token: created.registrationToken };
    },
    async startAgent(name, token, args = []) {
      const existing = agents.find((a) => a.name === name);
      const proxy = existing?.proxy ?? (await startTcpProxy(server.agentPort));
      const stateDir = path.join(dir, `agent-${name}`);
      const argv = [
        "--url", proxy.address,
        "--name", name,
        "--capacity", "2",
        "--state-dir", stateDir,
        "--backoff-initial-ms", "100",
        "--backoff-max-ms", "400",
        "--log-flush-ms", "20",
        "--kill-grace-ms", "1000",
        "--ack-timeout-ms", "1000",
        ...args,
      ];
      if (token !== null) argv.push("--token", token);
      const proc = startProcess("agent/main.ts", argv, {});
      const handle = { name, proc, proxy, stateDir };
      if (existing !== undefined) agents.splice(agents.indexOf(existing), 1);
      agents.push(handle);
      await proc.waitFor((line) => line.event === "connected");
      return handle;
    },
    async restartServer() {
      if (server.child.exitCode === null && server.child.signalCode === null) await server.stop("SIGKILL");
      server = await launchServer();
      for (const agent of agents) agent.proxy.setTarget(server.agentPort);
      connectClients();
    },
    async submit(poolId, script, extra = {}) {
      const response = await jobs.submitJob({ name: "fault-job", workerPoolId: poolId, script, ...extra } as SubmitJobRequest);
      return response.job!;
    },
    async job(id) {
      return (await jobs.getJob({ id })).job!;
    },
    waitJob(id, what, predicate, timeoutMs = 15_000) {
      return waitUntil(what, async () => {
        const job = await env.job(id);
        return predicate(job) ? job : undefined;
      }, timeoutMs);
    },
    waitEnded(id, timeoutMs = 20_000) {
      return env.waitJob(id, `job ${id} to end`, (job) => TERMINAL.has(job.state), timeoutMs);
    },
    async worker(poolId, name) {
      const listed = await workers.listWorkers({ workerPoolId: poolId });
      return listed.workers.find((w) => w.name === name);
    },
    async waitHealthy(poolId, names, timeoutMs = 15_000) {
      await waitUntil(`workers ${names.join(", ")} healthy`, async () => {
        const listed = await workers.listWorkers({ workerPoolId: poolId });
        const healthy = new Set(listed.workers.filter((w) => w.health === WorkerHealth.HEALTHY).map((w) => w.name));
        return names.every((n) => healthy.has(n)) ? true : undefined;
      }, timeoutMs);
    },
    async readLog(jobId, attempt = 0) {
      const seqs: bigint[] = [];
      const parts: Buffer[] = [];
      for await (const response of jobs.getJobLogs({ jobId, attempt, fromSeq: 0n, follow: false })) {
        seqs.push(response.chunk!.seq);
        parts.push(Buffer.from(response.chunk!.data));
      }
      return { seqs, data: Buffer.concat(parts) };
    },
    async waitUntilLogged(jobId, attempt, chunks, timeoutMs = 10_000) {
      await waitUntil(`${chunks} log chunks of ${jobId}#${attempt}`, async () => {
        const { seqs } = await env.readLog(jobId, attempt);
        return seqs.length >= chunks ? true : undefined;
      }, timeoutMs);
    },
    check: () => checkInvariants(target),
    assertInvariants: (opts) => waitForInvariants(target, opts),
    async close() {
      await Promise.all(agents.map((agent) => agent.proc.stop("SIGKILL")));
      await server.stop("SIGKILL");
      await Promise.all(agents.map((agent) => agent.proxy.close()));
      await pgProxy?.close();
      await schema.drop().catch(() => {});
      if (options.redisUrl === undefined) await deleteKeysWithPrefix(prefix);
      await rm(dir, { recursive: true, force: true });
    },
  };
  return env;
}

/** Lines of an agent's or the server's log with the given event. */
export function events(proc: ManagedProcess, event: string): LogLine[] {
  return proc.lines.filter((line) => line.event === event);
}

/** A script printing `lines` numbered lines, one every `everyMs`. */
export function countingScript(lines: number, everyMs: number): string {
  return `for i in $(seq 1 ${lines}); do echo "line $i"; sleep ${everyMs / 1000}; done`;
}

/** Asserts the text holds "line 1".."line n", each once and in order. */
export function countedLines(text: string): number[] {
  return text
    .split("\n")
    .filter((l) => l.startsWith("line "))
    .map((l) => Number(l.slice(5)));
}
