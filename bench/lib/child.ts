// The parent side: starts a Node process with the probe preloaded and an IPC
// channel, sends it commands, reads its probe, and kills it at the end.
// Every process a run starts is registered here so a failing run still
// leaves nothing behind (killAll).

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { createInterface } from "node:readline";
import type { ProbeReading } from "./probe.ts";

export const ROOT = path.resolve(import.meta.dirname, "../..");
const PROBE = path.join(ROOT, "bench/lib/probe.ts");

export interface ChildOptions {
  /** Shown in tables and errors. */
  name: string;
  script: string;
  args?: string[];
  env?: Record<string, string>;
  nodeArgs?: string[];
  /** Called with every stdout/stderr line (JSON log lines of the server). */
  onLine?: (line: string) => void;
}

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  readonly pid: number;
  readonly output: string[];
  /** Resolves once a command-serving child said it is ready. */
  ready(timeoutMs?: number): Promise<void>;
  call<T = unknown>(type: string, args?: unknown, timeoutMs?: number): Promise<T>;
  probe(options?: { reset?: boolean; gc?: boolean }): Promise<ProbeReading>;
  onEvent(handler: (event: Record<string, unknown>) => void): void;
  waitForLine(predicate: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
  readonly exited: Promise<number | null>;
}

const living = new Set<Child>();

export function startChild(options: ChildOptions): Child {
  const proc = spawn(process.execPath, ["--expose-gc", "--import", PROBE, ...(options.nodeArgs ?? []), path.join(ROOT, options.script), ...(options.args ?? [])], {
    cwd: ROOT,
    env: { ...process.env, ...options.env },
    stdio: ["ignore", "pipe", "pipe", "ipc"],
  });
  let nextId = 1;
  const pending = new Map<number, { resolve: (value: any) => void; reject: (error: Error) => void }>();
  const eventHandlers: Array<(event: Record<string, unknown>) => void> = [];
  const output: string[] = [];
  const lineWaiters = new Set<{ predicate: (line: string) => boolean; resolve: (line: string) => void }>();
  let readyResolve!: () => void;
  const readyPromise = new Promise<void>((resolve) => {
    readyResolve = resolve;
  });
  proc.on("error", () => {});
  const exited = once(proc, "exit").then(([code]) => code as number | null);

  const onLine = (line: string) => {
    output.push(line);
    if (output.length > 400) output.splice(0, 200);
    options.onLine?.(line);
    for (const waiter of lineWaiters) {
      if (waiter.predicate(line)) {
        lineWaiters.delete(waiter);
        waiter.resolve(line);
      }
    }
  };
  createInterface({ input: proc.stdout! }).on("line", onLine);
  createInterface({ input: proc.stderr! }).on("line", onLine);
  proc.on("message", (message: any) => {
    if (message?.type === "__ready") readyResolve();
    else if (message?.type === "__reply" || message?.type === "__probe_reply") {
      const waiter = pending.get(message.id);
      if (waiter === undefined) return;
      pending.delete(message.id);
      if (message.error !== undefined) waiter.reject(new Error(`${options.name}: ${message.error}`));
      else waiter.resolve(message.type === "__probe_reply" ? message.reading : message.result);
    } else if (typeof message?.event === "string") {
      for (const handler of eventHandlers) handler(message);
    }
  });
  exited.then((code) => {
    living.delete(child);
    const error = new Error(`${options.name} exited (${code}); last output:\n${output.slice(-30).join("\n")}`);
    for (const waiter of pending.values()) waiter.reject(error);
    pending.clear();
  });

  function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
    let timer: NodeJS.Timeout;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${options.name}: ${what} took longer than ${timeoutMs} ms; last output:\n${output.slice(-20).join("\n")}`)), timeoutMs);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  function send<T>(message: Record<string, unknown>, timeoutMs: number): Promise<T> {
    const id = nextId++;
    const reply = new Promise<T>((resolve, reject) => pending.set(id, { resolve, reject }));
    if (!proc.connected) {
      pending.delete(id);
      return Promise.reject(new Error(`${options.name} is not running; last output:\n${output.slice(-30).join("\n")}`));
    }
    proc.send({ ...message, id }, (error) => {
      if (error) pending.get(id)?.reject(error);
    });
    return withTimeout(reply, timeoutMs, String(message.type)).finally(() => pending.delete(id));
  }

  const child: Child = {
    name: options.name,
    process: proc,
    pid: proc.pid!,
    output,
    exited,
    ready: (timeoutMs = 30_000) => withTimeout(Promise.race([readyPromise, exited.then((code) => Promise.reject(new Error(`${options.name} exited (${code}) before it was ready:\n${output.slice(-30).join("\n")}`)))]), timeoutMs, "start"),
    call: (type, args, timeoutMs = 120_000) => send({ type, args }, timeoutMs),
    probe: (probeOptions = {}) => send({ type: "__probe", ...probeOptions }, 10_000),
    onEvent: (handler) => eventHandlers.push(handler),
    waitForLine(predicate, timeoutMs = 30_000) {
      const seen = output.find(predicate);
      if (seen !== undefined) return Promise.resolve(seen);
      return withTimeout(
        Promise.race([
          new Promise<string>((resolve) => lineWaiters.add({ predicate, resolve })),
          exited.then((code) => Promise.reject(new Error(`${options.name} exited (${code}):\n${output.slice(-30).join("\n")}`))),
        ]),
        timeoutMs,
        "waiting for a log line",
      );
    },
    async kill(signal = "SIGKILL") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
  living.add(child);
  return child;
}

export async function killAll(): Promise<void> {
  await Promise.all([...living].map((child) => child.kill("SIGKILL")));
}
