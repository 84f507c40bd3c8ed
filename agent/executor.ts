// Runs one script: writes it to <dir>/script.sh and runs `bash script.sh` in
// that directory, in its own process group (detached), so that a cancel, a
// timeout or an abandon reaches every process the script started.
//
// Lifecycle: created -> start() -> running -> (cancel(grace) or the timeout:
// stopping) -> exited. `done` resolves once the script's leader exited, its
// output was read to the end, and its process group is empty: whatever the
// script left behind in its group is killed when the leader exits, so nothing
// of a finished script keeps running. close() kills at once and waits for done.
//
// Stopping escalates: SIGINT to the group at once, SIGTERM at half the grace
// period, SIGKILL at its end.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { FinishOutcome } from "../gen/muster/v1/agent_pb.js";

/** After the leader exits, how long stdout/stderr may stay open (held by an escaped grandchild) before we stop reading. */
const STDIO_CLOSE_TIMEOUT_MS = 2_000;
/** How long to wait for the killed group's members to be reaped before giving up (and saying so). */
const GROUP_GONE_TIMEOUT_MS = 5_000;
const GROUP_POLL_MS = 20;

export type OutputStream = "stdout" | "stderr";
export type StopReason = "cancel" | "timeout" | "kill";

export interface ExecutionResult {
  outcome: FinishOutcome;
  /** The leader's exit code; 0 when it died of a signal or never started. */
  exitCode: number;
  /** The signal that ended the leader, e.g. "SIGKILL"; "" if it exited. */
  signal: string;
  message: string;
  durationMs: number;
  /** False when members of the group were still present after GROUP_GONE_TIMEOUT_MS. */
  groupGone: boolean;
}

export interface ExecutorOptions {
  /** The attempt's own directory; created (emptied first) by start(). */
  dir: string;
  script: string;
  env: NodeJS.ProcessEnv;
  /** Kill after this long (outcome TIMED_OUT); null: no limit. */
  timeoutMs: number | null;
  /** Grace between interrupt and kill when the timeout fires. */
  killGraceMs: number;
  onOutput: (stream: OutputStream, data: Buffer) => void;
  /** The interpreter; tests point it at a missing file to see SPAWN_FAILED. */
  shell?: string;
}

export interface Executor {
  /** Writes the script and spawns it; resolves once spawned (or once the spawn failed: see done). */
  start(): Promise<void>;
  /** Interrupt, terminate at half the grace, kill at its end. The first stop reason wins. */
  cancel(graceMs: number, reason?: Exclude<StopReason, "kill">): void;
  /** SIGKILL the group now (abandon, shutdown). Synchronous so crash paths can use it. */
  kill(): void;
  /** Stops reading output (the script blocks once the pipe fills); resume() reads again. */
  pause(): void;
  resume(): void;
  /** Kills at once and waits for the end. */
  close(): Promise<ExecutionResult>;
  readonly pid: number | undefined;
  readonly state: "created" | "running" | "stopping" | "exited";
  readonly done: Promise<ExecutionResult>;
}

/** Signals the whole group; a group that is already gone (ESRCH) is not an error. */
function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: nothing left to signal. EPERM cannot happen for a group we created.
  }
}

function groupExists(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function waitForGroupGone(pid: number): Promise<boolean> {
  const deadline = Date.now() + GROUP_GONE_TIMEOUT_MS;
  while (groupExists(pid)) {
    if (Date.now() >= deadline) return false;
    // Zombies stay in the group until their new parent reaps them; keep killing what is alive meanwhile.
    signalGroup(pid, "SIGKILL");
    await new Promise((resolve) => setTimeout(resolve, GROUP_POLL_MS).unref());
  }
  return true;
}

export function createExecutor(options: ExecutorOptions): Executor {
  let child: ChildProcess | null = null;
  let pid: number | undefined;
  let state: Executor["state"] = "created";
  let stopReason: StopReason | null = null;
  let startedAt = 0;
  const timers = new Set<NodeJS.Timeout>();
  let resolveDone!: (result: ExecutionResult) => void;
  const done = new Promise<ExecutionResult>((resolve) => {
    resolveDone = resolve;
  });

  function later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timer.unref();
    timers.add(timer);
  }

  function clearTimers(): void {
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
  }

  function finish(result: Omit<ExecutionResult, "durationMs">): void {
    clearTimers();
    state = "exited";
    resolveDone({ ...result, durationMs: startedAt === 0 ? 0 : Date.now() - startedAt });
  }

  function spawnFailed(message: string): void {
    finish({ outcome: FinishOutcome.SPAWN_FAILED, exitCode: 0, signal: "", message, groupGone: true });
  }

  function outcomeOf(code: number | null, signal: NodeJS.Signals | null): Omit<ExecutionResult, "durationMs" | "groupGone"> {
    const exitCode = code ?? 0;
    const signalName = signal ?? "";
    const how = signal === null ? `exit code ${exitCode}` : `signal ${signalName}`;
    switch (stopReason) {
      case "cancel":
        return { outcome: FinishOutcome.CANCELLED, exitCode, signal: signalName, message: `cancelled (${how})` };
      case "timeout":
        return {
          outcome: FinishOutcome.TIMED_OUT,
          exitCode,
          signal: signalName,
          message: `timed out after ${options.timeoutMs} ms (${how})`,
        };
      case "kill":
        return { outcome: FinishOutcome.SIGNALED, exitCode, signal: signalName || "SIGKILL", message: `killed by the agent (${how})` };
      default:
        if (signal !== null) return { outcome: FinishOutcome.SIGNALED, exitCode: 0, signal: signalName, message: `killed by ${signalName}` };
        return { outcome: FinishOutcome.EXITED, exitCode, signal: "", message: "" };
    }
  }

  async function start(): Promise<void> {
    if (state === "exited") return;
    if (state !== "created") throw new Error("executor already started");
    state = "running";
    startedAt = Date.now();
    try {
      await rm(options.dir, { recursive: true, force: true });
      await mkdir(options.dir, { recursive: true, mode: 0o700 });
      await writeFile(path.join(options.dir, "script.sh"), options.script, { mode: 0o600 });
    } catch (error) {
      spawnFailed(`cannot prepare ${options.dir}: ${(error as Error).message}`);
      return;
    }
    if (stopReason !== null) {
      // Killed or cancelled while the script was being written: never start it.
      finish({ ...outcomeOf(null, null), groupGone: true });
      return;
    }
    const proc = spawn(options.shell ?? "bash", ["script.sh"], {
      cwd: options.dir,
      env: options.env,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    child = proc;
    pid = proc.pid;
    if (pid === undefined) {
      // The spawn failed synchronously enough that there is no process; 'error' says why.
      await new Promise<void>((resolve) => {
        proc.once("error", (error) => {
          spawnFailed(`cannot start ${options.shell ?? "bash"}: ${error.message}`);
          resolve();
        });
      });
      return;
    }
    const leaderPid = pid;
    proc.on("error", () => {
      // Signalling failures after spawn; the exit path below settles the result.
    });
    proc.stdout!.on("data", (data: Buffer) => options.onOutput("stdout", data));
    proc.stderr!.on("data", (data: Buffer) => options.onOutput("stderr", data));
    const stdioClosed = Promise.all([
      new Promise((resolve) => proc.stdout!.once("close", resolve)),
      new Promise((resolve) => proc.stderr!.once("close", resolve)),
    ]);
    proc.once("exit", (code, signal) => {
      // Whatever is left in the group dies with the leader, and that also closes the pipes they held.
      signalGroup(leaderPid, "SIGKILL");
      // What is left in the pipes is bounded now that nothing writes to them: read it even if paused.
      proc.stdout!.resume();
      proc.stderr!.resume();
      const result = outcomeOf(code, signal);
      const stdioTimer = setTimeout(() => {
        proc.stdout!.destroy();
        proc.stderr!.destroy();
      }, STDIO_CLOSE_TIMEOUT_MS);
      stdioTimer.unref();
      Promise.all([stdioClosed, waitForGroupGone(leaderPid)]).then(([, groupGone]) => {
        clearTimeout(stdioTimer);
        finish({ ...result, groupGone });
      });
    });
    if (options.timeoutMs !== null) later(options.timeoutMs, () => cancel(options.killGraceMs, "timeout"));
  }

  function cancel(graceMs: number, reason: Exclude<StopReason, "kill"> = "cancel"): void {
    if (state === "exited" || stopReason !== null) return;
    stopReason = reason;
    if (pid === undefined) return;
    state = "stopping";
    const leaderPid = pid;
    signalGroup(leaderPid, "SIGINT");
    later(Math.floor(graceMs / 2), () => signalGroup(leaderPid, "SIGTERM"));
    later(graceMs, () => signalGroup(leaderPid, "SIGKILL"));
  }

  function kill(): void {
    if (state === "exited") return;
    if (stopReason === null) stopReason = "kill";
    if (state === "created") {
      finish({ ...outcomeOf(null, null), groupGone: true });
      return;
    }
    if (pid === undefined) return;
    state = "stopping";
    signalGroup(pid, "SIGKILL");
  }

  return {
    start,
    cancel,
    kill,
    pause() {
      child?.stdout?.pause();
      child?.stderr?.pause();
    },
    resume() {
      child?.stdout?.resume();
      child?.stderr?.resume();
    },
    async close() {
      kill();
      return done;
    },
    get pid() {
      return pid;
    },
    get state() {
      return state;
    },
    done,
  };
}
