// The agent: registers once, then keeps one Connect stream to the agent plane
// open, reconnecting with jittered backoff, and runs the assignments that
// arrive on it. All agent state (the attempts, the current session, the
// lifecycle) is owned here; an attempt owns its process, outbox and report,
// a session owns its call and heartbeat timer. Running jobs keep running
// while the stream is down; their output waits in the outbox.
//
// Lifecycle: starting (register, first connect) -> running (first Welcome)
// -> draining (drain(), SIGTERM, or Drain{exit_when_idle}: no new work, stop
// once every attempt is reported) -> stopped. A rejected credential or a bad
// state file ends in failed. `stopped` resolves with the exit code either way.
//
// Like a listening server, a started agent holds its process open (one ref'd
// handle, from start() until stopped); every other timer is unref()'d.

import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { status } from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import {
  AcceptAssignmentSchema,
  HelloSchema,
  type Assignment,
  type ConnectResponse,
  type RunningAttempt,
  type Welcome,
} from "../gen/muster/v1/agent_pb.js";
import { createLogger, type Logger } from "../src/logger.ts";
import { createAgentClient, type AgentClient } from "./agent-client.ts";
import { AgentError, EXIT_CONFIG, EXIT_CREDENTIAL_REJECTED, EXIT_INTERNAL, EXIT_OK, type ExitCode } from "./agent-error.ts";
import { attemptKey, createAttempt, prepareWorkDir, type Attempt } from "./attempt.ts";
import { createBackoff } from "./backoff.ts";
import type { AgentConfig } from "./config.ts";
import { createSession, type Session } from "./session.ts";
import type { WorkerState } from "./state-file.ts";
import { loadOrRegister, prepareStateDir } from "./worker-identity.ts";

export { AgentError, EXIT_CONFIG, EXIT_CREDENTIAL_REJECTED, EXIT_INTERNAL, EXIT_OK, type ExitCode };

/** On close(), how long cancelled jobs' finish reports may take to be acknowledged before they are dropped. */
const CLOSE_REPORT_TIMEOUT_MS = 5_000;
/** How long a try waits for the channel to connect before it opens the stream anyway. */
const CHANNEL_READY_TIMEOUT_MS = 5_000;
/** The keep-alive handle never fires in practice; it only holds the event loop open. */
const KEEP_ALIVE_MS = 2 ** 30;

export type AgentState = "starting" | "running" | "draining" | "stopped" | "failed";

export interface AgentStop {
  exitCode: ExitCode;
  reason: string;
}

export interface AgentOptions {
  logger?: Logger;
  /** The environment jobs inherit (the agent's own by default; MUSTER_TOKEN is always removed). */
  env?: NodeJS.ProcessEnv;
  /** Test hook: the interpreter scripts run with (default bash). */
  shell?: string;
}

export interface Agent {
  /** Registers if needed and connects; resolves on the first Welcome (or a clean stop before it), rejects if the agent fails. */
  start(): Promise<void>;
  /** Takes no new work, tells the server, and stops once every running job ended and was acknowledged. */
  drain(): Promise<void>;
  /** Cancels running jobs with the kill grace, reports them if it can, and stops. */
  close(): Promise<void>;
  /** SIGKILL every running script's process group now (synchronous; for crash and exit paths). */
  kill(): void;
  readonly state: AgentState;
  readonly workerId: string | null;
  /** The current session's id, null between sessions. */
  readonly sessionId: string | null;
  readonly stopped: Promise<AgentStop>;
}

export function createAgent(config: AgentConfig, options: AgentOptions = {}): Agent {
  const logger = options.logger ?? createLogger("muster-agent", config.logLevel);
  const attempts = new Map<string, Attempt>();
  const backoff = createBackoff({ initialMs: config.backoffInitialMs, maxMs: config.backoffMaxMs });
  const closing = new AbortController();
  let state: AgentState = "starting";
  let started = false;
  let stopping = false;
  let client: AgentClient | null = null;
  let session: Session | null = null;
  let workerId: string | null = null;
  let maxChunkBytes = config.maxChunkBytes;
  let keepAlive: NodeJS.Timeout | null = null;
  /** Why the agent stops once the last attempt settles while draining. */
  let drainedReason = "drained";

  let resolveStopped!: (stop: AgentStop) => void;
  const stopped = new Promise<AgentStop>((resolve) => {
    resolveStopped = resolve;
  });
  let resolveReady!: () => void;
  let rejectReady!: (error: Error) => void;
  const ready = new Promise<void>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  // start() may never be awaited (the CLI waits on `stopped`); a failure must not be an unhandled rejection.
  ready.catch(() => {});

  const link = {
    send: (message: Parameters<Session["send"]>[0]) => session?.send(message) ?? false,
  };

  /** Waits, unless the agent is closing (then returns early). */
  async function pause(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: closing.signal, ref: false }).catch(() => {});
  }

  // ---- the stream -----------------------------------------------------------

  async function connectLoop(me: WorkerState): Promise<void> {
    while (!closing.signal.aborted) {
      const running: RunningAttempt[] = [];
      for (const attempt of attempts.values()) {
        if (attempt.state !== "done" && attempt.state !== "abandoned") running.push(attempt.running());
      }
      // One try, one connection attempt: see channelReady in agent-client.ts.
      await client!.ready(CHANNEL_READY_TIMEOUT_MS);
      if (closing.signal.aborted) return;
      const sessionId = randomUUID();
      const current = createSession({
        client: client!,
        credential: me.credential,
        hello: create(HelloSchema, {
          workerId: me.workerId,
          sessionId,
          capacity: config.capacity,
          labels: config.labels,
          running,
          hostname: config.hostname,
          agentVersion: config.agentVersion,
        }),
        logger: logger.child({ sessionId }),
        draining: () => state === "draining",
        onWelcome: (welcome) => onWelcome(current, welcome),
        onMessage,
      });
      session = current;
      current.start();
      const end = await current.ended;
      session = null;
      if (closing.signal.aborted) return;
      if (end.code === status.UNAUTHENTICATED) {
        throw new AgentError(EXIT_CREDENTIAL_REJECTED, `credential rejected: the worker was deleted or its credential revoked (${end.details})`);
      }
      if (end.code === status.PERMISSION_DENIED) {
        throw new AgentError(EXIT_CREDENTIAL_REJECTED, `credential rejected: it belongs to another worker (${end.details})`);
      }
      if (end.welcomed) backoff.reset();
      const retryInMs = backoff.next();
      logger.warn(
        { event: "disconnected", sessionId: current.id, code: status[end.code], reason: end.details, retryInMs, running: attempts.size },
        "disconnected; reconnecting",
      );
      await pause(retryInMs);
    }
  }

  function onWelcome(current: Session, welcome: Welcome): void {
    const serverMax = welcome.maxChunkBytes > 0 ? welcome.maxChunkBytes : Number.POSITIVE_INFINITY;
    maxChunkBytes = Math.min(config.maxChunkBytes, serverMax);
    const adopted = new Map(welcome.adopted.map((a) => [attemptKey(a.jobId, a.attempt), a.ackedSeq]));
    const abandon = new Set(welcome.abandon.map((a) => attemptKey(a.jobId, a.attempt)));
    for (const [key, attempt] of attempts) {
      if (attempt.state === "done" || attempt.state === "abandoned") continue;
      attempt.setMaxChunkBytes(maxChunkBytes);
      const ackedSeq = adopted.get(key);
      if (ackedSeq !== undefined && !abandon.has(key)) {
        attempt.resend(ackedSeq);
        continue;
      }
      const reason = abandon.has(key) ? "the server abandoned it on reconnect" : "the server did not adopt it on reconnect";
      logger.warn({ event: "lease_lost", jobId: attempt.jobId, attempt: attempt.attempt, reason }, "lease lost");
      attempt.abandon(reason);
    }
    logger.info(
      {
        event: "connected",
        sessionId: current.id,
        workerId: welcome.workerId,
        heartbeatIntervalMs: welcome.heartbeatInterval ? durationMs(welcome.heartbeatInterval) : null,
        leaseTtlMs: welcome.leaseTtl ? durationMs(welcome.leaseTtl) : null,
        maxChunkBytes,
        adopted: adopted.size,
        abandoned: abandon.size,
      },
      "connected",
    );
    if (state === "starting") {
      state = "running";
      resolveReady();
    }
    if (state === "draining") current.heartbeat();
  }

  function onMessage(message: ConnectResponse["message"]): void {
    switch (message.case) {
      case "assignment":
        onAssignment(message.value);
        return;
      case "cancel": {
        const { jobId, attempt, gracePeriod } = message.value;
        const found = attempts.get(attemptKey(jobId, attempt));
        if (found === undefined) logger.info({ event: "cancel", jobId, attempt, known: false }, "cancel for an attempt not running here");
        else found.cancel(gracePeriod ? durationMs(gracePeriod) : null);
        return;
      }
      case "ack":
        attempts.get(attemptKey(message.value.jobId, message.value.attempt))?.onAck(message.value);
        return;
      case "leaseLost": {
        const { jobId, attempt, reason } = message.value;
        logger.warn({ event: "lease_lost", jobId, attempt, reason }, "lease lost");
        attempts.get(attemptKey(jobId, attempt))?.abandon(reason || "lease lost");
        return;
      }
      case "drain":
        logger.info({ event: "drain_requested", exitWhenIdle: message.value.exitWhenIdle }, "the server asked this worker to drain");
        if (message.value.exitWhenIdle) void drain();
        return;
      case "rejection": {
        const { jobId, attempt, code, message: text } = message.value;
        logger.warn({ event: "rejection", jobId: jobId || undefined, attempt: attempt || undefined, code: status[code] ?? code, reason: text }, "the server rejected a message");
        const found = jobId === "" ? undefined : attempts.get(attemptKey(jobId, attempt));
        if (found !== undefined && code === status.UNAVAILABLE) {
          found.retryLater();
          return;
        }
        if (found !== undefined && code === status.RESOURCE_EXHAUSTED) {
          const limit = /limit of (\d+)/.exec(text)?.[1];
          found.splitChunks(limit === undefined ? Math.max(1024, Math.floor(maxChunkBytes / 2)) : Number(limit));
          return;
        }
        if (jobId !== "" && (code === status.PERMISSION_DENIED || code === status.FAILED_PRECONDITION)) {
          if (found !== undefined) {
            logger.warn({ event: "lease_lost", jobId, attempt, reason: text }, "lease lost");
            found.abandon(text || "the server no longer holds the lease");
          }
        }
        return;
      }
      default:
        logger.warn({ event: "protocol_error", got: message.case }, "unexpected message ignored");
    }
  }

  function onAssignment(assignment: Assignment): void {
    const { jobId, attempt } = assignment;
    const key = attemptKey(jobId, attempt);
    if (attempts.has(key)) {
      // Delivered twice (e.g. around a reconnect): it already runs; say so again.
      link.send({ case: "accept", value: create(AcceptAssignmentSchema, { jobId, attempt }) });
      return;
    }
    if (state === "draining" || stopping) {
      // Not accepting lets the server's assignment timeout place it elsewhere.
      logger.warn({ event: "assignment_ignored", jobId, attempt }, "assignment ignored: this agent is draining");
      return;
    }
    link.send({ case: "accept", value: create(AcceptAssignmentSchema, { jobId, attempt }) });
    const busy = [...attempts.values()].filter((a) => a.state === "starting" || a.state === "running").length;
    logger.info({ event: "assignment_received", jobId, attempt, name: assignment.name, runId: assignment.runId || undefined }, "assignment received");
    if (busy >= config.capacity) {
      logger.warn({ event: "over_capacity", jobId, attempt, running: busy, capacity: config.capacity }, "assignment beyond capacity; running it anyway");
    }
    const created = createAttempt({
      assignment,
      workDir: config.workDir,
      logFlushMs: config.logFlushMs,
      maxChunkBytes,
      killGraceMs: config.killGraceMs,
      ackTimeoutMs: config.ackTimeoutMs,
      retryInitialMs: config.backoffInitialMs,
      retryMaxMs: config.backoffMaxMs,
      link,
      logger,
      baseEnv: options.env,
      shell: options.shell,
    });
    attempts.set(key, created);
    created.start();
    void created.settled.then(() => {
      if (attempts.get(key) === created) attempts.delete(key);
      if (state === "draining" && attempts.size === 0) void stop(EXIT_OK, drainedReason);
    });
  }

  // ---- lifecycle ------------------------------------------------------------

  async function run(): Promise<void> {
    try {
      await prepareStateDir(config.stateDir);
      try {
        const stale = await prepareWorkDir(config.workDir);
        if (stale > 0) logger.info({ event: "stale_work_dirs_removed", count: stale }, "removed work directories of a previous run");
      } catch (error) {
        throw new AgentError(EXIT_CONFIG, `work directory ${config.workDir} is unusable: ${(error as Error).message}`);
      }
      if (closing.signal.aborted) return;
      client = createAgentClient(config.url, {
        initialReconnectBackoffMs: config.backoffInitialMs,
        maxReconnectBackoffMs: config.backoffInitialMs,
      });
      const me = await loadOrRegister({ config, client, logger, backoff, signal: closing.signal, pause });
      if (me === null) return;
      workerId = me.workerId;
      await connectLoop(me);
    } catch (error) {
      if (error instanceof AgentError) {
        const event = error.exitCode === EXIT_CREDENTIAL_REJECTED ? "credential_rejected" : "agent_failed";
        logger.error({ event, exitCode: error.exitCode }, error.message);
        await stop(error.exitCode, error.message);
      } else {
        logger.error({ event: "agent_failed", err: error }, "the agent failed");
        await stop(EXIT_INTERNAL, (error as Error).message);
      }
    }
  }

  /** Ends everything: remaining attempts are killed and forgotten, the stream and the channel closed. */
  async function stop(exitCode: ExitCode, reason: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    closing.abort();
    for (const attempt of attempts.values()) attempt.abandon(`the agent is stopping: ${reason}`);
    await Promise.all([...attempts.values()].map((attempt) => attempt.settled));
    attempts.clear();
    if (session !== null) {
      const current = session;
      current.close();
      await current.ended;
    }
    client?.close();
    client = null;
    if (keepAlive !== null) clearInterval(keepAlive);
    keepAlive = null;
    state = exitCode === EXIT_OK ? "stopped" : "failed";
    logger.info({ event: "stopped", exitCode, reason }, "agent stopped");
    if (exitCode === EXIT_OK) resolveReady();
    else rejectReady(new AgentError(exitCode, reason));
    resolveStopped({ exitCode, reason });
  }

  async function drain(): Promise<void> {
    if (!stopping && state !== "draining") {
      state = "draining";
      logger.info({ event: "draining", running: attempts.size }, "draining: no new work; stopping once running jobs are reported");
      session?.heartbeat();
      if (attempts.size === 0) void stop(EXIT_OK, "drained");
    }
    await stopped;
  }

  async function close(): Promise<void> {
    if (!stopping && drainedReason !== "closed") {
      if (state !== "draining") {
        state = "draining";
        session?.heartbeat();
      }
      drainedReason = "closed";
      logger.info({ event: "closing", running: attempts.size }, "closing: cancelling running jobs");
      const pending = [...attempts.values()];
      for (const attempt of pending) attempt.cancel(config.killGraceMs);
      await Promise.all(pending.map((attempt) => attempt.exited));
      const reported = Promise.all(pending.map((attempt) => attempt.settled));
      const giveUp = new AbortController();
      const timeout = sleep(CLOSE_REPORT_TIMEOUT_MS, undefined, { ref: false, signal: giveUp.signal }).catch(() => {});
      await Promise.race([reported, timeout]);
      giveUp.abort();
      await stop(EXIT_OK, "closed");
    }
    await stopped;
  }

  return {
    start() {
      if (!started && !stopping) {
        started = true;
        keepAlive = setInterval(() => {}, KEEP_ALIVE_MS);
        void run();
      }
      return ready;
    },
    drain,
    close,
    kill() {
      for (const attempt of attempts.values()) attempt.kill();
    },
    get state() {
      return state;
    },
    get workerId() {
      return workerId;
    },
    get sessionId() {
      return session?.id ?? null;
    },
    stopped,
  };
}
