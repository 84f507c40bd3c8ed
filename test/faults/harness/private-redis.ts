// A redis-server of the test's own, on a free loopback port, with no
// persistence (--save "" --appendonly no): the Redis-loss scenarios FLUSHALL
// it and restart it, which must never happen to the shared Redis on 6379.
// restart() comes back on the same port with an empty data set, as a Redis
// without persistence does after a crash.

import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { freePort } from "../../support/net.ts";

const START_TIMEOUT_MS = 10_000;

export interface PrivateRedis {
  readonly port: number;
  readonly url: string;
  /** A fresh client; the caller disconnects it. */
  client(): Redis;
  flushAll(): Promise<void>;
  /** SIGKILL and start again on the same port, empty. */
  restart(downMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export async function startPrivateRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = await mkdtemp(path.join(tmpdir(), "muster-redis-"));
  let child: ChildProcess | null = null;

  async function launch(): Promise<void> {
    const proc = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no"],
      { stdio: "ignore" },
    );
    child = proc;
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`redis-server on ${port} exited with ${proc.exitCode}`);
      const probe = new Redis({ port, host: "127.0.0.1", lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      probe.on("error", () => {});
      try {
        await probe.connect();
        await probe.ping();
        return;
      } catch {
        if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start`);
        await sleep(50);
      } finally {
        probe.disconnect();
      }
    }
  }

  async function kill(): Promise<void> {
    const proc = child;
    child = null;
    if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, "exit");
    proc.kill("SIGKILL");
    await exited;
  }

  await launch();
  const url = `redis://127.0.0.1:${port}`;
  return {
    port,
    url,
    client: () => new Redis(url, { maxRetriesPerRequest: 1 }),
    async flushAll() {
      const redis = new Redis(url, { maxRetriesPerRequest: 1 });
      try {
        await redis.flushall();
      } finally {
        redis.disconnect();
      }
    },
    async restart(downMs = 0) {
      await kill();
      if (downMs > 0) await sleep(downMs);
      await launch();
    },
    async stop() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
