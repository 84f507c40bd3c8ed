// One agent's Connect stream, from Hello to the end of the stream.
//
// Lifecycle: 'awaiting_hello' -> 'attached' -> 'closed'. Messages are handled
// in arrival order: the session's own (Hello first) one at a time, and each
// attempt's reports one at a time after them, while different attempts' go
// on side by side (a promise chain per attempt). An acceptance does not hold
// up what follows it: it is written while the attempt's next report is taken,
// and a finish that follows at once is written with it. Log chunks are
// batched: they queue up while one insert is in flight and the next insert
// takes them all. A finish report waits for its attempt's chunks to be
// stored, so the job never ends before its log is complete.
//
// The session owns `held`: the attempts this worker holds leases for, as far
// as this replica knows. A report about any other attempt is checked against
// the lease store and refused with PERMISSION_DENIED (another worker holds
// it) or FAILED_PRECONDITION (nobody does: the lease was lost); the stream
// and the other attempts go on.
//
// Log chunks are stored contiguously: the session keeps, per attempt, the
// highest seq stored and the next seq it takes. A chunk below it is a
// resend (acknowledged again), one above it follows a chunk that was not
// stored and is dropped unacknowledged; the agent resends from its last
// acknowledged seq. A chunk taken goes to live followers at once, while it
// is being stored; acknowledgements still follow storage (the trade-off is
// described in src/scheduler/log-reader.ts). When Postgres fails (storing
// chunks, recording an acceptance or a finish), nothing is acknowledged: the
// agent gets a Rejection with UNAVAILABLE and retries, and the stream stays up.
//
// A stream that stops delivering is ended even if heartbeats still arrive:
// writes to the agent blocked, or an assignment unacknowledged, for longer
// than the deaf-stream limit (the lease TTL), so the worker stops counting
// as healthy.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { status, type ServerDuplexStream } from "@grpc/grpc-js";
import {
  ConnectResponseSchema,
  FinishOutcome,
  RunningAttemptSchema,
  type AgentLogChunk,
  type ConnectRequest,
  type ConnectResponse,
  type FinishReport,
  type Hello,
} from "../../gen/muster/v1/agent_pb.js";
import { LogStream } from "../../gen/muster/v1/job_pb.js";
import type { FinishOutcomeName } from "../core/job-outcome.ts";
import type { LogChunkRecord, LogStreamName, WorkerRecord } from "../domain.ts";
import type { Logger } from "../logger.ts";
import type { JobEvents } from "../scheduler/job-events.ts";
import type { JobLifecycle } from "../scheduler/job-lifecycle.ts";
import type { JobPlacer } from "../scheduler/job-placer.ts";
import type { WorkerMessage } from "../scheduler/worker-messages.ts";
import type { Database } from "../stores/database.ts";
import type { LeaseStore } from "../stores/lease-store.ts";
import { isMalformed, type MalformedMessage } from "../grpc/grpcjs-service.ts";
import type { SessionHandle, SessionRegistry } from "./session-registry.ts";
import { validateWorkerAttributes } from "./worker-attributes.ts";

/** Pause reading from the agent when this many messages wait to be handled. */
const MAX_PENDING_MESSAGES = 1024;
/** Bounds on what an agent may send: attempts announced in Hello, and job ids. */
const MAX_HELLO_RUNNING = 1000;
const MAX_JOB_ID_LENGTH = 128;

export interface SessionDeps {
  db: Database;
  leases: LeaseStore;
  events: JobEvents;
  placer: JobPlacer;
  lifecycle: JobLifecycle;
  registry: SessionRegistry;
  logger: Logger;
  replicaId: string;
  heartbeatIntervalMs: number;
  heartbeatTtlMs: number;
  leaseTtlMs: number;
  maxChunkBytes: number;
  /** Writes blocked or an assignment unacknowledged this long ends the stream; default the lease TTL. */
  deafStreamMs?: number;
  onLogChunks?: (count: number) => void;
  /**
   * Does the lease store still hold its data? When it does not, this waits
   * for the rebuild from Postgres (src/scheduler/store-recovery.ts) and
   * returns false; leases and sessions are back afterwards.
   */
  verifyStore?: () => Promise<boolean>;
  /** +1 when a session attaches, -1 when it ends. */
  onSessionCount?: (delta: number) => void;
}

type SessionState = "awaiting_hello" | "attached" | "closed";

const OUTCOMES: Record<number, FinishOutcomeName | undefined> = {
  [FinishOutcome.EXITED]: "exited",
  [FinishOutcome.SIGNALED]: "signaled",
  [FinishOutcome.CANCELLED]: "cancelled",
  [FinishOutcome.TIMED_OUT]: "timed_out",
  [FinishOutcome.SPAWN_FAILED]: "spawn_failed",
};

const STREAMS: Record<number, LogStreamName | undefined> = {
  [LogStream.STDOUT]: "stdout",
  [LogStream.STDERR]: "stderr",
  [LogStream.SYSTEM]: "system",
};

/** A Hello that repeats what is stored refreshes the worker's last-seen time at most this often. */
const HELLO_RECORD_INTERVAL_MS = 60_000;

/**
 * Whether a Hello must be written: the agent announces labels, capacity,
 * hostname or version other than stored, or the worker was last recorded
 * (by a Hello, else by registering) longer ago than HELLO_RECORD_INTERVAL_MS.
 */
export function helloChanges(
  worker: WorkerRecord,
  announced: { labels: string[]; capacity: number; hostname: string; agentVersion: string },
  now: Date,
): boolean {
  const sameLabels = worker.labels.length === announced.labels.length && worker.labels.every((label, i) => label === announced.labels[i]);
  if (!sameLabels || worker.capacity !== announced.capacity || worker.hostname !== announced.hostname || worker.agentVersion !== announced.agentVersion) {
    return true;
  }
  const recorded = worker.lastSeenAt ?? worker.createdAt;
  return now.getTime() - recorded.getTime() >= HELLO_RECORD_INTERVAL_MS;
}

function key(jobId: string, attempt: number): string {
  return `${jobId}/${attempt}`;
}

interface LogProgress {
  /** Highest seq stored for the attempt (contiguous from 1). */
  stored: number;
  /** The next seq this session takes into the pending batch. */
  next: number;
}

class RejectionError extends Error {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

export function runAgentSession(
  call: ServerDuplexStream<ConnectRequest, ConnectResponse>,
  worker: WorkerRecord,
  deps: SessionDeps,
): void {
  const { db, leases, logger: parentLogger } = deps;
  let log = parentLogger.child({ workerId: worker.id });
  let state: SessionState = "awaiting_hello";
  let sessionId = "";
  let draining = false;
  /** The worker's pool, known once Hello is handled. */
  let poolId = "";
  /**
   * When the last heartbeat accepted was received (the attach counts as one,
   * from just before it was recorded): the store counts freshness from then.
   */
  let lastHeartbeatAt = 0;
  const held = new Set<string>();
  /** The session's messages (Hello, then anything not about one attempt), one after another. */
  let chain: Promise<void> = Promise.resolve();
  /** Per attempt, its last report taken: each waits for the one before it. */
  const attemptChains = new Map<string, Promise<void>>();
  /** Acceptances being recorded (they do not hold up the attempt's next report). */
  const acceptances = new Set<Promise<void>>();
  let pending = 0;
  let pendingChunks: LogChunkRecord[] = [];
  /** Chunks taken this turn, by job, not yet published to live followers. */
  let livePending: Map<string, LogChunkRecord[]> | null = null;
  let flushing: Promise<void> | null = null;
  const progress = new Map<string, LogProgress>();
  /** Assignments sent and not yet acknowledged by any message about them: when each was sent. */
  const unacknowledged = new Map<string, number>();
  let writesBlockedSince: number | null = null;
  let watchdog: NodeJS.Timeout | null = null;
  const deafStreamMs = deps.deafStreamMs ?? deps.leaseTtlMs;

  const handle: SessionHandle = {
    workerId: worker.id,
    get sessionId() {
      return sessionId;
    },
    deliver: (message) => deliver(message),
    end: (code, reason) => end(code, reason),
  };

  function send(message: MessageInitShape<typeof ConnectResponseSchema>["message"]): void {
    if (state === "closed") return;
    const flowing = call.write(create(ConnectResponseSchema, { message }));
    if (!flowing && writesBlockedSince === null) writesBlockedSince = Date.now();
  }

  /** Ends a stream that heartbeats but does not take what is sent to it. */
  function checkDeaf(): void {
    if (state !== "attached") return;
    const now = Date.now();
    if (writesBlockedSince !== null && now - writesBlockedSince > deafStreamMs) {
      log.warn({ event: "agent_stream_deaf", blockedMs: now - writesBlockedSince }, "the agent stopped reading its stream");
      end(status.UNAVAILABLE, `the agent has not read its stream for ${now - writesBlockedSince} ms`);
      return;
    }
    for (const [k, sentAt] of unacknowledged) {
      if (now - sentAt > deafStreamMs) {
        log.warn({ event: "agent_stream_deaf", assignment: k, waitedMs: now - sentAt }, "the agent did not acknowledge an assignment");
        end(status.UNAVAILABLE, `assignment ${k} not acknowledged within ${deafStreamMs} ms`);
        return;
      }
    }
  }

  function end(code: number, reason: string): void {
    if (state === "closed") return;
    log.info({ event: "agent_stream_ended", code, reason }, "ending agent stream");
    if (code === status.OK) call.end();
    else call.emit("error", { code, details: reason });
    void cleanup("server ended the stream");
  }

  async function cleanup(reason: string): Promise<void> {
    if (state === "closed") return;
    const wasAttached = state === "attached";
    state = "closed";
    if (watchdog !== null) clearInterval(watchdog);
    watchdog = null;
    if (!wasAttached) return;
    deps.registry.remove(handle);
    deps.onSessionCount?.(-1);
    try {
      await flushLogs();
      await leases.detach(worker.id, sessionId);
    } catch (error) {
      log.warn({ event: "agent_detach_failed", err: error }, "cleaning up the session failed");
    }
    log.info({ event: "agent_disconnected", sessionId, reason }, "agent disconnected");
  }

  function reject(jobId: string, attempt: number, code: number, message: string): void {
    log.warn({ event: "agent_report_rejected", jobId, attempt, code, reason: message }, "refused an agent report");
    send({ case: "rejection", value: { jobId, attempt, code, message } });
  }

  /** Throws RejectionError unless this worker holds the attempt's lease. */
  async function requireLease(jobId: string, attempt: number): Promise<void> {
    if (jobId === "" || attempt < 1) throw new RejectionError(status.INVALID_ARGUMENT, "job_id and attempt are required");
    if (jobId.length > MAX_JOB_ID_LENGTH) throw new RejectionError(status.INVALID_ARGUMENT, `job_id is longer than ${MAX_JOB_ID_LENGTH} characters`);
    if (held.has(key(jobId, attempt))) return;
    const lease = await leaseOf(jobId, attempt);
    if (lease === null) throw new RejectionError(status.FAILED_PRECONDITION, `no lease for job ${jobId} attempt ${attempt}: it was lost or released`);
    if (lease.workerId !== worker.id) throw new RejectionError(status.PERMISSION_DENIED, `job ${jobId} attempt ${attempt} is leased to another worker`);
    held.add(key(jobId, attempt));
  }

  /** The attempt's lease; a missing one is looked up again after checking the store did not lose it. */
  async function leaseOf(jobId: string, attempt: number) {
    const lease = await leases.lease(jobId, attempt);
    if (lease !== null || deps.verifyStore === undefined) return lease;
    await deps.verifyStore();
    return leases.lease(jobId, attempt);
  }

  function deliver(message: WorkerMessage): void {
    switch (message.type) {
      case "assign":
        held.add(key(message.jobId, message.attempt));
        unacknowledged.set(key(message.jobId, message.attempt), Date.now());
        // A new attempt has no stored log yet: no need to ask Postgres.
        progress.set(key(message.jobId, message.attempt), { stored: 0, next: 1 });
        send({
          case: "assignment",
          value: {
            jobId: message.jobId,
            attempt: message.attempt,
            name: message.name,
            script: message.script,
            env: message.env,
            runId: message.runId,
            timeout: message.timeoutMs === null ? undefined : durationFromMs(message.timeoutMs),
          },
        });
        return;
      case "cancel":
        send({ case: "cancel", value: { jobId: message.jobId, attempt: message.attempt, gracePeriod: durationFromMs(message.graceMs) } });
        return;
      case "lease_lost":
        held.delete(key(message.jobId, message.attempt));
        unacknowledged.delete(key(message.jobId, message.attempt));
        progress.delete(key(message.jobId, message.attempt));
        send({ case: "leaseLost", value: { jobId: message.jobId, attempt: message.attempt, reason: message.reason } });
        return;
      case "drain":
        send({ case: "drain", value: { exitWhenIdle: message.exitWhenIdle } });
        return;
      case "disconnect":
        end(message.code, message.reason);
        return;
    }
  }

  async function onHello(hello: Hello): Promise<void> {
    if (hello.workerId !== worker.id) {
      throw Object.assign(new Error(`the credential belongs to worker ${worker.id}, not ${hello.workerId}`), { code: status.PERMISSION_DENIED });
    }
    if (hello.sessionId === "" || hello.sessionId.length > 128) {
      throw Object.assign(new Error("hello.session_id must be 1 to 128 characters"), { code: status.INVALID_ARGUMENT });
    }
    if (hello.running.length > MAX_HELLO_RUNNING) {
      throw Object.assign(new Error(`hello announces more than ${MAX_HELLO_RUNNING} running attempts`), { code: status.INVALID_ARGUMENT });
    }
    const attributes = validateWorkerAttributes({ labels: hello.labels, capacity: hello.capacity || worker.capacity });
    if (typeof attributes === "string") throw Object.assign(new Error(attributes), { code: status.INVALID_ARGUMENT });
    sessionId = hello.sessionId;
    log = log.child({ sessionId });
    const announced = { labels: attributes.labels, capacity: attributes.capacity, hostname: hello.hostname.slice(0, 255), agentVersion: hello.agentVersion.slice(0, 64) };
    const now = new Date();
    // `worker` was read by credential an instant ago. A Hello that repeats it
    // (a reconnect, or the first Hello after registering) is not written:
    // a thousand agents coming back after a restart would otherwise queue a
    // thousand commits ahead of their Welcomes.
    const current = helloChanges(worker, announced, now)
      ? await db.workers.recordHello(worker.id, announced, now)
      : worker;
    if (current === null) throw Object.assign(new Error("the worker was deleted"), { code: status.UNAUTHENTICATED });
    const replaced = deps.registry.add(handle);
    replaced?.end(status.ABORTED, "superseded by a newer session of the same worker");
    const attachedAt = Date.now();
    await leases.attach(
      { workerId: worker.id, poolId: current.poolId, capacity: current.capacity, labels: current.labels, acceptsWork: current.state === "enabled" },
      sessionId,
      deps.replicaId,
      deps.heartbeatTtlMs,
    );
    state = "attached";
    deps.onSessionCount?.(1);
    const adopted = [];
    const abandon = [];
    // Each announced attempt is looked up concurrently (its lease, then its stored log).
    const verdicts = await Promise.all(
      hello.running.map(async (running) => {
        const lease = await leaseOf(running.jobId, running.attempt);
        if (lease === null || lease.workerId !== worker.id) return { running, stored: null };
        return { running, stored: await db.logs.maxSeq(running.jobId, running.attempt) };
      }),
    );
    for (const { running, stored } of verdicts) {
      if (stored !== null) {
        held.add(key(running.jobId, running.attempt));
        progress.set(key(running.jobId, running.attempt), { stored, next: stored + 1 });
        adopted.push(create(RunningAttemptSchema, { jobId: running.jobId, attempt: running.attempt, ackedSeq: BigInt(stored) }));
      } else {
        abandon.push(create(RunningAttemptSchema, { jobId: running.jobId, attempt: running.attempt }));
      }
    }
    send({
      case: "welcome",
      value: {
        workerId: worker.id,
        heartbeatInterval: durationFromMs(deps.heartbeatIntervalMs),
        leaseTtl: durationFromMs(deps.leaseTtlMs),
        adopted,
        abandon,
        maxChunkBytes: deps.maxChunkBytes,
      },
    });
    log.info(
      { event: "agent_connected", poolId: current.poolId, capacity: current.capacity, labels: current.labels, adopted: adopted.length, abandoned: abandon.length },
      "agent connected",
    );
    poolId = current.poolId;
    lastHeartbeatAt = attachedAt;
    void deps.placer.drainPool(current.poolId);
    call.on("drain", () => {
      writesBlockedSince = null;
    });
    watchdog = setInterval(checkDeaf, Math.max(50, Math.min(deps.heartbeatIntervalMs, Math.floor(deafStreamMs / 4))));
    watchdog.unref();
  }

  async function onHeartbeat(draining_: boolean): Promise<void> {
    const receivedAt = Date.now();
    let ok = await leases.heartbeat(worker.id, sessionId, deps.heartbeatTtlMs, deps.leaseTtlMs);
    if (!ok && deps.verifyStore !== undefined) {
      // Perhaps the store lost this session with everything else: once it is
      // rebuilt (and the session re-attached), the heartbeat counts again.
      await deps.verifyStore();
      ok = await leases.heartbeat(worker.id, sessionId, deps.heartbeatTtlMs, deps.leaseTtlMs);
    }
    if (!ok) {
      end(status.ABORTED, "this session no longer holds the worker (superseded or detached)");
      return;
    }
    // A heartbeat after a silence longer than the TTL makes a stale worker
    // healthy again: jobs waiting for a healthy worker may run now. The store
    // counts freshness from when each heartbeat was received, and records one
    // up to a short batch window later (heartbeat-batch.ts): the worker may
    // have been stale until now if the previous one was received more than a
    // TTL ago.
    const wasStale = Date.now() - lastHeartbeatAt > deps.heartbeatTtlMs;
    lastHeartbeatAt = receivedAt;
    if (wasStale && poolId !== "") void deps.placer.drainPool(poolId);
    if (draining_ && !draining) {
      try {
        const current = await db.workers.get(worker.id);
        if (current !== null) {
          await leases.updateWorker({ workerId: worker.id, poolId: current.poolId, capacity: current.capacity, labels: current.labels, acceptsWork: false });
        }
        draining = true;
        // Said once it is so: from here on, placement passes it over.
        log.info({ event: "agent_draining" }, "agent is shutting down: no new work");
      } catch (error) {
        // The next heartbeat tries again; the stream stays up.
        log.warn({ event: "agent_drain_record_failed", err: error }, "recording that the agent drains failed");
      }
    }
  }

  /** The attempt's log progress, read from Postgres the first time this session sees the attempt. */
  async function logProgress(jobId: string, attempt: number): Promise<LogProgress> {
    const k = key(jobId, attempt);
    let entry = progress.get(k);
    if (entry === undefined) {
      const stored = await db.logs.maxSeq(jobId, attempt);
      entry = progress.get(k) ?? { stored, next: stored + 1 };
      progress.set(k, entry);
    }
    return entry;
  }

  async function onLog(chunk: AgentLogChunk): Promise<void> {
    const stream = STREAMS[chunk.stream] ?? "stdout";
    if (chunk.data.byteLength > deps.maxChunkBytes) {
      throw new RejectionError(status.RESOURCE_EXHAUSTED, `log chunk of ${chunk.data.byteLength} bytes exceeds the limit of ${deps.maxChunkBytes}; split it`);
    }
    if (chunk.seq < 1n) throw new RejectionError(status.INVALID_ARGUMENT, "log chunk seq starts at 1");
    if (chunk.seq > 2n ** 31n - 1n) throw new RejectionError(status.INVALID_ARGUMENT, "log chunk seq is out of range");
    const seq = Number(chunk.seq);
    const entry = await logProgress(chunk.jobId, chunk.attempt);
    if (seq < entry.next) {
      // A resend of something stored (or about to be): acknowledge what is stored.
      if (seq <= entry.stored) send({ case: "ack", value: { jobId: chunk.jobId, attempt: chunk.attempt, seq: BigInt(entry.stored), finished: false } });
      return;
    }
    if (seq > entry.next) return;
    entry.next = seq + 1;
    const record: LogChunkRecord = {
      jobId: chunk.jobId,
      attempt: chunk.attempt,
      seq,
      stream,
      data: chunk.data,
      time: chunk.time ? timestampDate(chunk.time) : new Date(),
    };
    pendingChunks.push(record);
    if (flushing === null) flushing = flushLoop();
    // Live followers get the chunk now, in parallel with storing it, not
    // after the commit: it is the next in sequence from the lease holder, and
    // the agent resends it, same seq and bytes, until its storage is
    // acknowledged. So what a follower sees live is stored, unless the
    // attempt ends as lost first (see src/scheduler/log-reader.ts). The
    // chunks taken in one turn of the event loop go out together, one
    // message per job.
    if (livePending === null) {
      livePending = new Map();
      setImmediate(publishLive);
    }
    const same = livePending.get(record.jobId);
    if (same === undefined) livePending.set(record.jobId, [record]);
    else same.push(record);
  }

  function publishLive(): void {
    const batches = livePending!; // set by the onLog that scheduled this call
    livePending = null;
    for (const [jobId, chunks] of batches) {
      deps.events.logs(jobId, chunks).catch((error: unknown) => {
        log.warn({ event: "log_publish_failed", jobId, err: error }, "publishing log chunks to live followers failed");
      });
    }
  }

  async function flushLoop(): Promise<void> {
    let batch: LogChunkRecord[] = [];
    try {
      while (pendingChunks.length > 0) {
        batch = pendingChunks;
        pendingChunks = [];
        await db.logs.append(batch);
        deps.onLogChunks?.(batch.length);
        const highest = new Map<string, { jobId: string; attempt: number; seq: number }>();
        for (const chunk of batch) {
          const k = key(chunk.jobId, chunk.attempt);
          const entry = highest.get(k) ?? { jobId: chunk.jobId, attempt: chunk.attempt, seq: 0 };
          entry.seq = Math.max(entry.seq, chunk.seq);
          highest.set(k, entry);
        }
        for (const [k, entry] of highest) {
          const known = progress.get(k);
          if (known !== undefined) known.stored = Math.max(known.stored, entry.seq);
          send({ case: "ack", value: { jobId: entry.jobId, attempt: entry.attempt, seq: BigInt(entry.seq), finished: false } });
        }
        batch = [];
      }
    } catch (error) {
      // Nothing of the failed batch, nor what queued behind it, is acknowledged:
      // each attempt takes chunks again from its first unstored seq, which the agent resends.
      const failed = [...batch, ...pendingChunks];
      pendingChunks = [];
      const attempts = new Map<string, { jobId: string; attempt: number }>();
      for (const chunk of failed) attempts.set(key(chunk.jobId, chunk.attempt), { jobId: chunk.jobId, attempt: chunk.attempt });
      log.error({ event: "log_persist_failed", err: error, chunks: failed.length }, "storing log chunks failed; the agent will resend them");
      for (const [k, { jobId, attempt }] of attempts) {
        const entry = progress.get(k);
        if (entry !== undefined) entry.next = entry.stored + 1;
        send({
          case: "rejection",
          value: { jobId, attempt, code: status.UNAVAILABLE, message: `storing log chunks failed; resend from seq ${(entry?.stored ?? 0) + 1}` },
        });
      }
    } finally {
      flushing = null;
    }
  }

  async function flushLogs(): Promise<void> {
    while (flushing !== null) await flushing;
  }

  async function onFinish(report: FinishReport): Promise<void> {
    await flushLogs();
    const outcome = OUTCOMES[report.outcome];
    if (outcome === undefined) throw new RejectionError(status.INVALID_ARGUMENT, "finish.outcome is required");
    // The job never ends before its log is complete: chunks that were not stored come first.
    // (An attempt that wrote nothing, lastSeq 0, has nothing to check.)
    const stored = report.lastSeq === 0n ? 0 : (await logProgress(report.jobId, report.attempt)).stored;
    if (BigInt(stored) < report.lastSeq) {
      throw new RejectionError(status.UNAVAILABLE, `log stored up to seq ${stored} of ${report.lastSeq}; resend the rest, then the finish report`);
    }
    const job = await deps.lifecycle.finished(worker.id, report.jobId, report.attempt, {
      outcome,
      exitCode: report.exitCode,
      signal: report.signal,
      message: report.message.slice(0, 1024),
    });
    held.delete(key(report.jobId, report.attempt));
    progress.delete(key(report.jobId, report.attempt));
    if (job === null && !(await finishedHere(report.jobId, report.attempt))) {
      throw new RejectionError(status.FAILED_PRECONDITION, `job ${report.jobId} attempt ${report.attempt} is no longer held by this worker`);
    }
    send({ case: "ack", value: { jobId: report.jobId, attempt: report.attempt, seq: report.lastSeq, finished: true } });
  }

  /** The attempt ended on this worker with a recorded outcome: a finish sent again after a reconnect. */
  async function finishedHere(jobId: string, attempt: number): Promise<boolean> {
    const attempts = await db.jobs.attempts(jobId);
    const mine = attempts.find((a) => a.attempt === attempt && a.workerId === worker.id && a.state === "ended");
    return mine !== undefined && mine.outcome !== "worker_lost" && mine.outcome !== "unreachable";
  }

  /**
   * Records the acceptance without holding up the attempt's next message: a
   * finish that follows at once is then written with it, as one transition
   * (job-batches.ts). What goes wrong is answered as for any other report.
   */
  function onAccept(jobId: string, attempt: number): void {
    const acceptance = deps.lifecycle
      .accepted(worker.id, jobId, attempt)
      .then(async (job) => {
        if (job !== null) return;
        const current = await db.jobs.get(jobId);
        if (current?.state === "running" && current.attempt === attempt && current.workerId === worker.id) return;
        held.delete(key(jobId, attempt));
        throw new RejectionError(status.FAILED_PRECONDITION, `job ${jobId} attempt ${attempt} is no longer assigned to this worker`);
      })
      .catch((error: unknown) => answerFailure(jobId, attempt, error))
      .finally(() => acceptances.delete(acceptance));
    acceptances.add(acceptance);
  }

  /** A report that could not be recorded: refused, or retried by the agent; anything else ends the stream. */
  function answerFailure(jobId: string, attempt: number, error: unknown): void {
    if (error instanceof RejectionError) {
      reject(jobId, attempt, error.code, error.message);
    } else if (jobId !== "" && typeof (error as { code?: unknown }).code !== "number") {
      // A store failed (Postgres or Redis unreachable): not recorded, so not acknowledged.
      // The agent keeps the report and retries; the stream and the other attempts go on.
      log.error({ event: "agent_report_failed", jobId, attempt, err: error }, "recording an agent report failed; the agent will retry");
      reject(jobId, attempt, status.UNAVAILABLE, "the server could not record this now; retry");
    } else {
      endOnError(error as Error & { code?: number });
    }
  }

  function endOnError(error: Error & { code?: number }): void {
    if (typeof error.code === "number") {
      end(error.code, error.message);
    } else {
      log.error({ event: "agent_message_failed", err: error }, "handling an agent message failed");
      end(status.UNAVAILABLE, "the server could not handle the message; reconnect");
    }
  }

  async function onMessage(request: ConnectRequest): Promise<void> {
    const message = request.message;
    if (state === "closed") return;
    if (state === "awaiting_hello") {
      if (message.case !== "hello") {
        throw Object.assign(new Error("the first message on Connect must be Hello"), { code: status.FAILED_PRECONDITION });
      }
      await onHello(message.value);
      return;
    }
    let jobId = "";
    let attempt = 0;
    try {
      switch (message.case) {
        case "hello":
          throw Object.assign(new Error("Hello may be sent only once per stream"), { code: status.FAILED_PRECONDITION });
        case "heartbeat":
          await onHeartbeat(message.value.draining);
          return;
        case "accept":
          ({ jobId, attempt } = message.value);
          await requireLease(jobId, attempt);
          unacknowledged.delete(key(jobId, attempt));
          onAccept(jobId, attempt);
          return;
        case "log":
          ({ jobId, attempt } = message.value);
          await requireLease(jobId, attempt);
          unacknowledged.delete(key(jobId, attempt));
          await onLog(message.value);
          return;
        case "finish":
          ({ jobId, attempt } = message.value);
          unacknowledged.delete(key(jobId, attempt));
          if (!held.has(key(jobId, attempt)) && (await finishedHere(jobId, attempt))) {
            send({ case: "ack", value: { jobId, attempt, seq: message.value.lastSeq, finished: true } });
            return;
          }
          await requireLease(jobId, attempt);
          await onFinish(message.value);
          return;
        default:
          throw new RejectionError(status.INVALID_ARGUMENT, "empty or unknown message");
      }
    } catch (error) {
      answerFailure(jobId, attempt, error);
    }
  }

  /** The heartbeat in flight, if any: heartbeats do not wait behind job messages. */
  let beating: Promise<void> | null = null;

  call.on("data", (request: ConnectRequest | MalformedMessage) => {
    if (isMalformed(request)) {
      end(status.INVALID_ARGUMENT, request.malformed);
      return;
    }
    // Liveness must not wait for Postgres: a heartbeat skips the queue of job
    // messages (whose order matters), so a stalled store cannot expire leases.
    if (state === "attached" && request.message.case === "heartbeat") {
      if (beating !== null) return;
      const draining_ = request.message.value.draining;
      beating = onHeartbeat(draining_)
        .catch((error: Error & { code?: number }) => {
          log.error({ event: "agent_heartbeat_failed", err: error }, "recording a heartbeat failed");
          end(typeof error.code === "number" ? error.code : status.UNAVAILABLE, "the server could not record the heartbeat; reconnect");
        })
        .finally(() => {
          beating = null;
        });
      return;
    }
    pending++;
    if (pending >= MAX_PENDING_MESSAGES) call.pause();
    // An attempt's reports go in order, after the session's own messages
    // (Hello); different attempts' reports do not wait for each other.
    const message = request.message;
    const attemptKey =
      message.case === "accept" || message.case === "log" || message.case === "finish" ? key(message.value.jobId, message.value.attempt) : null;
    const after = attemptKey === null ? chain : (attemptChains.get(attemptKey) ?? chain);
    const handled = after
      .then(() => onMessage(request))
      .catch(endOnError)
      .finally(() => {
        pending--;
        if (pending < MAX_PENDING_MESSAGES / 4 && call.isPaused()) call.resume();
        if (attemptKey !== null && attemptChains.get(attemptKey) === handled) attemptChains.delete(attemptKey);
      });
    if (attemptKey === null) chain = handled;
    else attemptChains.set(attemptKey, handled);
  });
  /** Cleans up once every message taken has been handled, acceptances being recorded included. */
  const cleanupAfterAll = (reason: string) => {
    chain = Promise.all([chain, ...attemptChains.values(), ...acceptances]).then(() => cleanup(reason));
  };
  call.on("end", () => {
    cleanupAfterAll("agent closed the stream");
    call.end();
  });
  call.on("cancelled", () => {
    cleanupAfterAll("stream cancelled");
  });
  call.on("error", (error) => {
    cleanupAfterAll(`stream error: ${error.message}`);
  });
  call.on("close", () => {
    cleanupAfterAll("stream closed");
  });
}
