// One assignment on this worker, from spawn to the server's final Ack: the
// script's executor, its log batcher and outbox, and its finish report. The
// attempt owns all three; the agent owns the set of attempts and the stream.
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

  const batcher: LogBatcher = createLogBatcher({
    jobId,
    attempt,
    maxChunkBytes: options.maxChunkBytes,
    flushMs: options.logFlushMs,
    onChunk(chunk) {
      link.send({ case: "log", value: chunk });
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
      logger.warn({ event: "attempt_abandoned", reason }, "abandoning the attempt: killing the script, dropping its reports");
      state = "abandoned";
      report = null;
      batcher.drop();
      executor.kill();
      settle();
    },
    onAck(ack) {
      if (state === "abandoned" || state === "done") return;
      batcher.ack(ack.seq);
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
      batcher.ack(serverAckedSeq);
      for (const chunk of batcher.unacked()) {
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
