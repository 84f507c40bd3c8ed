// One assignment on this worker, from spawn to the server's final Ack: the
// script's executor, its log batcher and outbox, and its finish report. The
// attempt owns all three; the agent owns the set of attempts and the stream.
//
// Nothing is dropped while the stream stays up either: output or a report
// that goes unacknowledged for ackTimeoutMs is sent again (the server drops
// chunks that follow one it could not store), and a Rejection with
// UNAVAILABLE (the server could not record it, e.g. Postgres is down) sends
// everything again after a backoff, the acceptance included until the
// server has acknowledged anything of this attempt.
//
// Lifecycle: starting -> running -> reporting (exited; finish report sent and
// kept until Ack{finished}) -> done. From any state, abandon() (lease lost,
// Welcome.abandon, shutdown) kills the process group, drops the outbox and
// the report, and ends in abandoned. Either way the work directory is removed
// and `settled` resolves.

import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { mkdir, readdir, rm } from "node:fs/promises";
import path from "node:path";
import {
  FinishOutcome,
  FinishReportSchema,
  RunningAttemptSchema,
  type Ack,
  type Assignment,
  type ConnectRequest,
  type FinishReport,
  type RunningAttempt,
} from "../gen/muster/v1/agent_pb.js";
import { LogStream } from "../gen/muster/v1/job_pb.js";
import type { Logger } from "../src/logger.ts";
import { AcceptAssignmentSchema } from "../gen/muster/v1/agent_pb.js";
import { createExecutor, type ExecutionResult, type Executor } from "./executor.ts";
import { createLogBatcher, type LogBatcher } from "./log-batcher.ts";

/** Unacknowledged output held per attempt before the script is made to wait (its pipe stops being read). */
const MAX_OUTBOX_BYTES = 16 * 1024 * 1024;
/** Environment variables of the agent that a job must never see. */
const PRIVATE_ENV = ["MUSTER_TOKEN"];

export type AttemptState = "starting" | "running" | "reporting" | "done" | "abandoned";

/** The agent's current stream, as an attempt sees it. */
export interface AttemptLink {
  /** Sends when a welcomed session is open; false when not (the message is resent after the next Welcome). */
  send(message: ConnectRequest["message"]): boolean;
}

export interface AttemptOptions {
  assignment: Assignment;
  workDir: string;
  logFlushMs: number;
  maxChunkBytes: number;
  /** Grace on timeout, and on a cancel that names none. */
  killGraceMs: number;
  /** Unacknowledged output or report is sent again after this long (doubling up to retryMaxMs). */
  ackTimeoutMs?: number;
  /** First delay before retrying after a Rejection with UNAVAILABLE. */
  retryInitialMs?: number;
  retryMaxMs?: number;
  link: AttemptLink;
  logger: Logger;
  baseEnv?: NodeJS.ProcessEnv;
  /** Test hook: the interpreter. */
  shell?: string;
}

export interface Attempt {
  readonly jobId: string;
  readonly attempt: number;
  readonly state: AttemptState;
  readonly dir: string;
  start(): void;
  cancel(graceMs: number | null): void;
  /** Kill now, forget the output and the report, send nothing more. */
  abandon(reason: string): void;
  onAck(ack: Ack): void;
  /** The server could not record a report now (Rejection UNAVAILABLE): send everything again after a backoff. */
  retryLater(): void;
  /** The server refused a chunk as larger than `limit` bytes (RESOURCE_EXHAUSTED): re-cut and resend. */
  splitChunks(limit: number): void;
  /** After a Welcome adopted this attempt: everything unacknowledged again, in order, then the pending report. */
  resend(serverAckedSeq: bigint): void;
  /** For Hello. */
  running(): RunningAttempt;
  setMaxChunkBytes(bytes: number): void;
  /** SIGKILL the process group synchronously (crash paths). */
  kill(): void;
  /** The script ended and its last output was sealed. */
  readonly exited: Promise<ExecutionResult>;
  /** done or abandoned, and the work directory removed. */
  readonly settled: Promise<void>;
}

export function attemptKey(jobId: string, attempt: number): string {
  return `${jobId}#${attempt}`;
}

/** A directory name no job id can escape from: anything but [A-Za-z0-9_-] becomes "_". */
export function attemptDirName(jobId: string, attempt: number): string {
  return `${jobId.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 128)}-${attempt}`;
}

/** Creates the work directory (0700) and removes what a previous agent process left in it; returns how many. */
export async function prepareWorkDir(workDir: string): Promise<number> {
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  // No attempt survives an agent restart (its outbox lived in memory), so its directory is garbage.
  const stale = (await readdir(workDir)).filter((name) => /^[A-Za-z0-9_-]+-\d+$/.test(name));
  await Promise.all(stale.map((name) => rm(path.join(workDir, name), { recursive: true, force: true })));
  return stale.length;
}

export function jobEnv(base: NodeJS.ProcessEnv, assignment: Assignment): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const name of PRIVATE_ENV) delete env[name];
  return {
    ...env,
    ...assignment.env,
    MUSTER_JOB_ID: assignment.jobId,
    MUSTER_ATTEMPT: String(assignment.attempt),
    MUSTER_RUN_ID: assignment.runId,
    MUSTER_JOB_NAME: assignment.name,
  };
}

export function createAttempt(options: AttemptOptions): Attempt {
  const { assignment, link, killGraceMs } = options;
  const { jobId, attempt } = assignment;
  const dir = path.join(options.workDir, attemptDirName(jobId, attempt));
  const logger = options.logger.child({ jobId, attempt });
  let state: AttemptState = "starting";
  let report: FinishReport | null = null;
  let paused = false;
  /** The server acknowledged something of this attempt, so it recorded the acceptance. */
  let confirmed = false;
  const ackTimeoutMs = options.ackTimeoutMs ?? 5_000;
  const retryInitialMs = options.retryInitialMs ?? 250;
  const retryMaxMs = Math.max(retryInitialMs, options.retryMaxMs ?? 10_000);
  /** When the outstanding output last made progress (or started waiting); null: nothing outstanding. */
  let waitingSince: number | null = null;
  let resendAfterMs = ackTimeoutMs;
  let ackTimer: NodeJS.Timeout | null = null;
  let retryTimer: NodeJS.Timeout | null = null;
  let retryDelayMs = retryInitialMs;

  function outstanding(): boolean {
    return (state === "running" || state === "reporting") && (batcher.outboxBytes > 0 || batcher.unacked().length > 0 || report !== null);
  }

  /** Starts the ack clock when something goes out with nothing else outstanding. */
  function armAckTimer(): void {
    if (waitingSince === null) waitingSince = Date.now();
    if (ackTimer !== null) return;
    ackTimer = setInterval(() => {
      if (!outstanding()) {
        stopAckTimer();
        return;
      }
      if (waitingSince !== null && Date.now() - waitingSince >= resendAfterMs) {
        logger.warn({ event: "resending_unacknowledged", waitedMs: Date.now() - waitingSince, ackedSeq: Number(batcher.ackedSeq) }, "output not acknowledged in time; sending it again");
        waitingSince = Date.now();
        resendAfterMs = Math.min(resendAfterMs * 2, Math.max(ackTimeoutMs, retryMaxMs));
        sendOutstanding(false);
      }
    }, Math.max(25, Math.floor(ackTimeoutMs / 4)));
    ackTimer.unref();
  }

  function stopAckTimer(): void {
    if (ackTimer !== null) clearInterval(ackTimer);
    ackTimer = null;
    waitingSince = null;
    resendAfterMs = ackTimeoutMs;
  }

  function clearTimers(): void {
    stopAckTimer();
    if (retryTimer !== null) clearTimeout(retryTimer);
    retryTimer = null;
  }

  /** Everything unacknowledged again, in order, then the report; the acceptance first if asked. */
  function sendOutstanding(withAccept: boolean): void {
    if (state !== "running" && state !== "reporting") return;
    if (withAccept && !confirmed && !link.send({ case: "accept", value: create(AcceptAssignmentSchema, { jobId, attempt }) })) return;
    for (const chunk of batcher.unacked()) {
      if (!link.send({ case: "log", value: chunk })) return;
    }
    if (report !== null) link.send({ case: "finish", value: report });
  }

  const batcher: LogBatcher = createLogBatcher({
    jobId,
    attempt,
    maxChunkBytes: options.maxChunkBytes,
    flushMs: options.logFlushMs,
    onChunk(chunk) {
      link.send({ case: "log", value: chunk });
      armAckTimer();
      if (!paused && batcher.outboxBytes > MAX_OUTBOX_BYTES) {
        paused = true;
        executor.pause();
        logger.warn({ event: "output_paused", outboxBytes: batcher.outboxBytes }, "output not acknowledged: the script waits until it is");
      }
    },
  });

  const executor: Executor = createExecutor({
    dir,
    script: assignment.script,
    env: jobEnv(options.baseEnv ?? process.env, assignment),
    timeoutMs: assignment.timeout === undefined ? null : durationMs(assignment.timeout),
    killGraceMs,
    shell: options.shell,
    onOutput(stream, data) {
      batcher.write(stream === "stdout" ? LogStream.STDOUT : LogStream.STDERR, data);
    },
  });

  const exited = executor.done.then((result) => {
    if (state === "abandoned") return result;
    batcher.close();
    report = create(FinishReportSchema, {
      jobId,
      attempt,
      outcome: result.outcome,
      exitCode: result.exitCode,
      signal: result.signal,
      message: result.message,
      lastSeq: batcher.lastSeq,
    });
    state = "reporting";
    const level = result.outcome === FinishOutcome.SPAWN_FAILED ? "warn" : "info";
    logger[level](
      {
        event: "assignment_finished",
        outcome: FinishOutcome[result.outcome],
        exitCode: result.exitCode,
        signal: result.signal || undefined,
        message: result.message || undefined,
        durationMs: result.durationMs,
        lastSeq: Number(batcher.lastSeq),
      },
      "assignment finished",
    );
    if (!result.groupGone) {
      logger.warn({ event: "process_group_lingers", pid: executor.pid }, "members of the script's process group were still present after it was killed");
    }
    link.send({ case: "finish", value: report });
    armAckTimer();
    return result;
  });

  let resolveSettled!: () => void;
  const settled = new Promise<void>((resolve) => {
    resolveSettled = resolve;
  });
  let settling = false;

  function settle(): void {
    if (settling) return;
    settling = true;
    clearTimers();
    // The directory goes only once the process is gone: a killed script may still be writing into it.
    void executor.done
      .then(() => rm(dir, { recursive: true, force: true }))
      .catch((error: Error) => logger.warn({ event: "work_dir_cleanup_failed", dir, err: error }, "could not remove the work directory"))
      .then(resolveSettled);
  }

  return {
    jobId,
    attempt,
    dir,
    get state() {
      return state;
    },
    exited,
    settled,
    start() {
      if (state !== "starting") return;
      state = "running";
      void executor.start().then(() => {
        if (executor.pid !== undefined) logger.info({ event: "assignment_started", pid: executor.pid, dir }, "assignment started");
      });
    },
    cancel(graceMs) {
      if (state !== "running") return;
      const grace = graceMs ?? killGraceMs;
      logger.info({ event: "cancel", graceMs: grace }, "cancelling: interrupt now, kill when the grace period ends");
      executor.cancel(grace, "cancel");
    },
    abandon(reason) {
      if (state === "done" || state === "abandoned") return;
      clearTimers();
      logger.warn({ event: "attempt_abandoned", reason }, "abandoning the attempt: killing the script, dropping its reports");
      state = "abandoned";
      report = null;
      batcher.drop();
      executor.kill();
      settle();
    },
    onAck(ack) {
      if (state === "abandoned" || state === "done") return;
      confirmed = true;
      const before = batcher.ackedSeq;
      batcher.ack(ack.seq);
      if (batcher.ackedSeq > before || ack.finished) {
        // Progress: the ack clock starts again for whatever is still outstanding.
        waitingSince = Date.now();
        resendAfterMs = ackTimeoutMs;
        retryDelayMs = retryInitialMs;
      }
      if (paused && batcher.outboxBytes <= MAX_OUTBOX_BYTES / 2) {
        paused = false;
        executor.resume();
      }
      if (ack.finished && state === "reporting") {
        state = "done";
        report = null;
        logger.debug({ event: "finish_acknowledged" }, "finish report acknowledged");
        settle();
      }
    },
    resend(serverAckedSeq) {
      if (state === "abandoned" || state === "done") return;
      confirmed = true;
      batcher.ack(serverAckedSeq);
      sendOutstanding(false);
      if (outstanding()) {
        waitingSince = Date.now();
        armAckTimer();
      }
    },
    retryLater() {
      if ((state !== "running" && state !== "reporting") || retryTimer !== null) return;
      const delay = Math.floor(retryDelayMs / 2 + Math.random() * (retryDelayMs / 2));
      retryDelayMs = Math.min(retryDelayMs * 2, retryMaxMs);
      logger.info({ event: "retry_scheduled", retryInMs: delay }, "the server could not record this attempt's reports; retrying");
      retryTimer = setTimeout(() => {
        retryTimer = null;
        waitingSince = Date.now();
        sendOutstanding(true);
        if (outstanding()) armAckTimer();
      }, delay);
      retryTimer.unref();
    },
    splitChunks(limit) {
      if (state !== "running" && state !== "reporting") return;
      const recut = batcher.split(Math.max(1, limit));
      if (recut.length === 0) return;
      logger.warn({ event: "chunks_split", limit, fromSeq: Number(recut[0].seq), chunks: recut.length }, "the server refused a chunk as too large; sending it in smaller pieces");
      if (report !== null) report.lastSeq = batcher.lastSeq;
      for (const chunk of recut) {
        if (!link.send({ case: "log", value: chunk })) return;
      }
      if (report !== null) link.send({ case: "finish", value: report });
    },
    running() {
      return create(RunningAttemptSchema, { jobId, attempt, ackedSeq: batcher.ackedSeq });
    },
    setMaxChunkBytes(bytes) {
      batcher.setMaxChunkBytes(bytes);
    },
    kill() {
      executor.kill();
    },
  };
}
