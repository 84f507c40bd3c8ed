// A fleet of simulated agents in one process, speaking the real agent
// protocol (proto/muster/v1/agent.proto) over grpc-js: each registers with a
// pool's registration token, holds its own channel and Connect stream (its
// own TCP connection: a local subchannel pool), says Hello, heartbeats at the
// Welcome's interval, and reconnects with the real agent's jittered backoff,
// listing the attempts it still runs. Jobs are not executed; the fleet only
// does what a benchmark asks:
//   finish  accept, optionally one small log chunk, finish at once;
//   hold    accept and keep the attempt until finishAll;
//   logs    accept, write `bytesPerS` of 100-byte lines for `durationMs` in
//           chunks sealed every LOG_FLUSH_MS (the real agent's default), finish.
// It records when each assignment arrived (for submit-to-start latency), and
// counts duplicates: a job assigned to the fleet more than once.

import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationMs, timestampNow } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import {
  AgentService,
  ConnectRequestSchema,
  FinishOutcome,
  RegisterRequestSchema,
  type ConnectRequest,
  type ConnectResponse,
  type RegisterResponse,
} from "../../gen/muster/v1/agent_pb.js";
import { LogStream } from "../../gen/muster/v1/job_pb.js";
import { channelReady } from "../../agent/agent-client.ts";
import { createBackoff, type Backoff } from "../../agent/backoff.ts";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";
import { emit, serveCommands } from "../lib/ipc-child.ts";

const LOG_FLUSH_MS = 50;
const MAX_CHUNK_BYTES = 64 * 1024;
const LINE_BYTES = 100;
const BACKOFF_INITIAL_MS = 250;
const BACKOFF_MAX_MS = 10_000;
/** As the real agent (agent/agent.ts): how long a reconnect waits for the channel before it tries anyway. */
const CHANNEL_READY_TIMEOUT_MS = 5_000;

const Client = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(AgentService), "AgentService");
type UntypedClient = grpc.Client & {
  register(request: unknown, callback: (error: grpc.ServiceError | null, response?: RegisterResponse) => void): void;
  connect(metadata: grpc.Metadata): grpc.ClientDuplexStream<ConnectRequest, ConnectResponse>;
};

type Mode = "finish" | "hold" | "logs";

interface Options {
  mode: Mode;
  /** finish mode: send one small log chunk before finishing. */
  logChunk: boolean;
  bytesPerS: number;
  durationMs: number;
}

interface Running {
  jobId: string;
  attempt: number;
  name: string;
  seq: number;
  acked: number;
  timer: NodeJS.Timeout | null;
}

interface Agent {
  index: number;
  workerId: string;
  credential: string;
  capacity: number;
  client: UntypedClient;
  call: grpc.ClientDuplexStream<ConnectRequest, ConnectResponse> | null;
  welcomed: boolean;
  heartbeat: NodeJS.Timeout | null;
  backoff: Backoff;
  running: Map<string, Running>;
}

const now = () => performance.timeOrigin + performance.now();

let url = "";
let options: Options = { mode: "finish", logChunk: false, bytesPerS: 0, durationMs: 0 };
let closing = false;
const agents: Agent[] = [];
const assignedJobs = new Set<string>();
let duplicates = 0;
let finished = 0;
let rejections = 0;
let streamErrors = 0;
let reconnects = 0;
let welcomes = 0;
let adopted = 0;
let abandoned = 0;
let lastWelcomeAt = 0;
let logBytesSent = 0;
/** When the first log line was written, and when the last finish was acknowledged (ms, shared clock). */
let firstLogAt = 0;
let lastFinishAckAt = 0;
let logChunksSent = 0;
const arrivals: Array<[string, number]> = [];
const finishWaiters: Array<{ count: number; resolve: () => void }> = [];

function newClient(): UntypedClient {
  return new Client(url, grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.initial_reconnect_backoff_ms": BACKOFF_INITIAL_MS,
    // As the real agent (agent/agent.ts): the channel never waits longer than the agent's shortest delay.
    "grpc.max_reconnect_backoff_ms": BACKOFF_INITIAL_MS,
  }) as unknown as UntypedClient;
}

async function register(args: { url: string; token: string; count: number; capacity: number; namePrefix: string; concurrency?: number }): Promise<number> {
  url = args.url;
  let next = 0;
  const client = newClient();
  const worker = async () => {
    while (next < args.count) {
      const index = next++;
      const response = await new Promise<RegisterResponse>((resolve, reject) =>
        client.register(
          create(RegisterRequestSchema, { registrationToken: args.token, name: `${args.namePrefix}-${index}`, labels: [], capacity: args.capacity, hostname: "bench", agentVersion: "bench" }),
          (error, r) => (error ? reject(error) : resolve(r!)),
        ),
      );
      agents.push({
        index,
        workerId: response.workerId,
        credential: response.credential,
        capacity: args.capacity,
        client: newClient(),
        call: null,
        welcomed: false,
        heartbeat: null,
        backoff: createBackoff({ initialMs: BACKOFF_INITIAL_MS, maxMs: BACKOFF_MAX_MS }),
        running: new Map(),
      });
    }
  };
  await Promise.all(Array.from({ length: args.concurrency ?? 16 }, worker));
  client.close();
  return agents.length;
}

type Outgoing = MessageInitShape<typeof ConnectRequestSchema>["message"];

function write(agent: Agent, message: Outgoing): void {
  agent.call?.write(create(ConnectRequestSchema, { message }));
}

function finish(agent: Agent, run: Running): void {
  write(agent, {
    case: "finish",
    value: { jobId: run.jobId, attempt: run.attempt, outcome: FinishOutcome.EXITED, exitCode: 0, lastSeq: BigInt(run.seq) },
  });
}

function line(name: string, n: number): string {
  const head = `${now().toFixed(3)} ${name} ${n} `;
  return head + "x".repeat(Math.max(0, LINE_BYTES - 1 - head.length)) + "\n";
}

function startLogs(agent: Agent, run: Running): void {
  const linesPerChunk = Math.floor(MAX_CHUNK_BYTES / LINE_BYTES);
  const linesPerMs = options.bytesPerS / LINE_BYTES / 1000;
  const started = now();
  const ends = started + options.durationMs;
  let lineNo = 0;
  // Lines are due by elapsed time, not per tick, so a late timer writes more, not less.
  const tick = () => {
    const t = Math.min(now(), ends);
    let pending = Math.floor((t - started) * linesPerMs) - lineNo;
    while (pending > 0) {
      const n = Math.min(pending, linesPerChunk);
      let text = "";
      for (let i = 0; i < n; i++) text += line(run.name, ++lineNo);
      pending -= n;
      run.seq++;
      const data = Buffer.from(text);
      logBytesSent += data.byteLength;
      if (firstLogAt === 0) firstLogAt = now();
      logChunksSent++;
      write(agent, { case: "log", value: { jobId: run.jobId, attempt: run.attempt, seq: BigInt(run.seq), stream: LogStream.STDOUT, data, time: timestampNow() } });
    }
    if (t >= ends) {
      run.timer = null;
      finish(agent, run);
    } else {
      run.timer = setTimeout(tick, LOG_FLUSH_MS);
    }
  };
  run.timer = setTimeout(tick, LOG_FLUSH_MS);
}

function onMessage(agent: Agent, response: ConnectResponse): void {
  const message = response.message;
  switch (message.case) {
    case "welcome": {
      agent.welcomed = true;
      agent.backoff.reset();
      welcomes++;
      lastWelcomeAt = now();
      adopted += message.value.adopted.length;
      abandoned += message.value.abandon.length;
      for (const gone of message.value.abandon) {
        const run = agent.running.get(`${gone.jobId}/${gone.attempt}`);
        if (run?.timer) clearTimeout(run.timer);
        agent.running.delete(`${gone.jobId}/${gone.attempt}`);
      }
      const interval = message.value.heartbeatInterval ? durationMs(message.value.heartbeatInterval) : 5000;
      if (agent.heartbeat) clearInterval(agent.heartbeat);
      agent.heartbeat = setInterval(() => write(agent, { case: "heartbeat", value: { time: timestampNow(), draining: false } }), interval);
      agent.heartbeat.unref();
      return;
    }
    case "assignment": {
      const { jobId, attempt, name } = message.value;
      arrivals.push([name, now()]);
      if (assignedJobs.has(jobId)) duplicates++;
      assignedJobs.add(jobId);
      const run: Running = { jobId, attempt, name, seq: 0, acked: 0, timer: null };
      agent.running.set(`${jobId}/${attempt}`, run);
      write(agent, { case: "accept", value: { jobId, attempt } });
      if (options.mode === "finish") {
        if (options.logChunk) {
          run.seq = 1;
          write(agent, { case: "log", value: { jobId, attempt, seq: 1n, stream: LogStream.STDOUT, data: Buffer.from("ok\n"), time: timestampNow() } });
        }
        finish(agent, run);
      } else if (options.mode === "logs") {
        startLogs(agent, run);
      }
      return;
    }
    case "ack": {
      const key = `${message.value.jobId}/${message.value.attempt}`;
      const run = agent.running.get(key);
      if (run === undefined) return;
      run.acked = Math.max(run.acked, Number(message.value.seq));
      if (message.value.finished) {
        agent.running.delete(key);
        finished++;
        lastFinishAckAt = now();
        for (let i = finishWaiters.length - 1; i >= 0; i--) {
          if (finished >= finishWaiters[i].count) finishWaiters.splice(i, 1)[0].resolve();
        }
      }
      return;
    }
    case "rejection":
      rejections++;
      emit("rejection", { code: message.value.code, message: message.value.message });
      return;
    case "leaseLost": {
      const key = `${message.value.jobId}/${message.value.attempt}`;
      const run = agent.running.get(key);
      if (run?.timer) clearTimeout(run.timer);
      agent.running.delete(key);
      emit("lease_lost", { jobId: message.value.jobId, reason: message.value.reason });
      return;
    }
    default:
      return;
  }
}

function connect(agent: Agent): void {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${agent.credential}`);
  const call = agent.client.connect(metadata);
  agent.call = call;
  agent.welcomed = false;
  call.on("data", (response: ConnectResponse) => onMessage(agent, response));
  let ended = false;
  const onEnd = () => {
    if (ended) return;
    ended = true;
    if (agent.heartbeat) clearInterval(agent.heartbeat);
    agent.heartbeat = null;
    if (agent.call === call) agent.call = null;
    agent.welcomed = false;
    if (closing) return;
    reconnects++;
    setTimeout(() => {
      if (closing) return;
      // As the real agent does (agent/agent.ts): one try, one connection attempt.
      void channelReady(agent.client.getChannel(), CHANNEL_READY_TIMEOUT_MS).then(() => {
        if (!closing) connect(agent);
      });
    }, agent.backoff.next()).unref();
  };
  call.on("error", () => {
    streamErrors++;
    onEnd();
  });
  call.on("end", onEnd);
  call.on("status", () => onEnd());
  write(agent, {
    case: "hello",
    value: {
      workerId: agent.workerId,
      sessionId: randomUUID(),
      capacity: agent.capacity,
      labels: [],
      running: [...agent.running.values()].map((r) => ({ jobId: r.jobId, attempt: r.attempt, ackedSeq: BigInt(r.acked) })),
      hostname: "bench",
      agentVersion: "bench",
    },
  });
}

async function waitUntil(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function stats() {
  let runningNow = 0;
  for (const agent of agents) runningNow += agent.running.size;
  return {
    agents: agents.length,
    connected: agents.filter((a) => a.welcomed).length,
    assigned: arrivals.length,
    distinctJobs: assignedJobs.size,
    duplicates,
    finished,
    running: runningNow,
    rejections,
    streamErrors,
    reconnects,
    welcomes,
    adopted,
    abandoned,
    lastWelcomeAt,
    logBytesSent,
    logChunksSent,
    firstLogAt,
    lastFinishAckAt,
  };
}

serveCommands({
  register,
  async connect(args: Partial<Options> & { timeoutMs?: number }) {
    options = { ...options, ...args };
    const started = now();
    for (const agent of agents) connect(agent);
    await waitUntil(() => agents.every((a) => a.welcomed), args.timeoutMs ?? 60_000, "every agent's Welcome");
    return { allConnectedMs: now() - started, startedAt: started, lastWelcomeAt };
  },
  configure(args: Partial<Options>) {
    options = { ...options, ...args };
  },
  stats,
  /** Resets the counters a restart is judged by. */
  resetCounters() {
    welcomes = 0;
    adopted = 0;
    abandoned = 0;
    reconnects = 0;
    streamErrors = 0;
    return stats();
  },
  /** Resets the log counters a log run is judged by (after a warm-up phase). */
  resetLogCounters() {
    logBytesSent = 0;
    logChunksSent = 0;
    firstLogAt = 0;
    lastFinishAckAt = 0;
    return stats();
  },
  async waitFor(args: { connected?: number; adopted?: number; finished?: number; assigned?: number; running?: number; timeoutMs: number }) {
    await waitUntil(
      () => {
        const s = stats();
        return (
          (args.connected === undefined || s.connected >= args.connected) &&
          (args.adopted === undefined || s.adopted >= args.adopted) &&
          (args.finished === undefined || s.finished >= args.finished) &&
          (args.assigned === undefined || s.assigned >= args.assigned) &&
          (args.running === undefined || s.running >= args.running)
        );
      },
      args.timeoutMs,
      JSON.stringify(args),
    );
    return { ...stats(), at: now() };
  },
  arrivals() {
    return arrivals;
  },
  async finishAll(args: { timeoutMs: number }) {
    const target = finished + stats().running;
    for (const agent of agents) for (const run of agent.running.values()) finish(agent, run);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`finishAll: ${finished}/${target} acknowledged`)), args.timeoutMs);
      finishWaiters.push({ count: target, resolve: () => (clearTimeout(timer), resolve()) });
      if (finished >= target) resolve();
    });
    return stats();
  },
  close() {
    closing = true;
    for (const agent of agents) {
      if (agent.heartbeat) clearInterval(agent.heartbeat);
      for (const run of agent.running.values()) if (run.timer) clearTimeout(run.timer);
      agent.call?.cancel();
      agent.client.close();
    }
    return stats();
  },
});
