// Real server and agent processes for end-to-end tests: started on port 0,
// their JSON log lines collected, and every one of them killed at teardown.

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { createInterface } from "node:readline";

const ROOT = path.resolve(import.meta.dirname, "../..");
const NODE = process.execPath;
const START_TIMEOUT_MS = 30_000;

export interface LogLine {
  event?: string;
  msg?: string;
  [key: string]: unknown;
}

export interface ManagedProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[];
  readonly output: string[];
  /** Resolves with the first log line that matches. */
  waitFor(predicate: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Sends a signal and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  readonly exited: Promise<number | null>;
}

const running = new Set<ManagedProcess>();

export function startProcess(script: string, args: string[], env: Record<string, string>): ManagedProcess {
  const child = spawn(NODE, [path.join(ROOT, script), ...args], {
    cwd: ROOT,
    env: { ...process.env, MUSTER_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: LogLine[] = [];
  const output: string[] = [];
  const waiters = new Set<{ predicate: (line: LogLine) => boolean; resolve: (line: LogLine) => void }>();
  const onLine = (text: string) => {
    output.push(text);
    if (!text.startsWith("{")) return;
    let line: LogLine;
    try {
      line = JSON.parse(text) as LogLine;
    } catch {
      return;
    }
    lines.push(line);
    for (const waiter of waiters) {
      if (waiter.predicate(line)) {
        waiters.delete(waiter);
        waiter.resolve(line);
      }
    }
  };
  createInterface({ input: child.stdout! }).on("line", onLine);
  createInterface({ input: child.stderr! }).on("line", onLine);
  const exited = once(child, "exit").then(([code]) => code as number | null);
  const managed: ManagedProcess = {
    child,
    lines,
    output,
    exited,
    waitFor(predicate, timeoutMs = START_TIMEOUT_MS) {
      const seen = lines.find(predicate);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise<LogLine>((resolve, reject) => {
        const waiter = { predicate, resolve };
        waiters.add(waiter);
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`${script}: no matching log line within ${timeoutMs} ms; output:\n${output.slice(-40).join("\n")}`));
        }, timeoutMs);
        timer.unref();
        exited.then((code) => {
          if (!waiters.has(waiter)) return;
          waiters.delete(waiter);
          clearTimeout(timer);
          reject(new Error(`${script} exited (${code}) before the expected log line; output:\n${output.slice(-40).join("\n")}`));
        });
      });
    },
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const code = await exited;
      running.delete(managed);
      return code;
    },
  };
  running.add(managed);
  exited.then(() => running.delete(managed));
  return managed;
}

export interface ServerProcess extends ManagedProcess {
  api: string;
  agent: string;
}

export async function startServer(env: Record<string, string>, args: string[] = []): Promise<ServerProcess> {
  const proc = startProcess(
    "src/main.ts",
    ["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0", ...args],
    env,
  );
  const started = await proc.waitFor((line) => line.event === "server_started");
  return Object.assign(proc, { api: String(started.api), agent: String(started.agent) });
}

export function startAgent(env: Record<string, string>, args: string[]): ManagedProcess {
  return startProcess("agent/main.ts", args, env);
}

/** Kills whatever a test left running. */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((proc) => proc.stop("SIGKILL")));
}
