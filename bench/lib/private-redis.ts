// A private redis-server on a free loopback port, for the figures that must
// count only Muster's own Redis commands (S1's commands per second): the
// shared Redis on 6379 carries other engineers' test traffic, often tens of
// thousands of commands a second. Same version and settings as the shared
// one (no persistence, as this machine runs Redis); gone at the end of the run.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { Redis } from "ioredis";
import { freePort } from "./muster.ts";

export interface PrivateRedis {
  url: string;
  /** Commands processed so far (Redis 7 counts the ones a Lua script calls too) and EVALSHA/EVAL calls (round trips). */
  commands(): Promise<{ total: number; scripts: number; cpuS: number }>;
  stop(): Promise<void>;
}

export async function startPrivateRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  const proc = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""], { stdio: "ignore" });
  const exited = once(proc, "exit");
  const url = `redis://127.0.0.1:${port}`;
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => {});
  for (let tries = 0; ; tries++) {
    try {
      await client.connect();
      break;
    } catch (error) {
      if (tries > 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    url,
    async commands() {
      const [stats, commandstats, cpu] = await Promise.all([client.info("stats"), client.info("commandstats"), client.info("cpu")]);
      const cpuField = (name: string) => Number(new RegExp(`^${name}:([0-9.]+)`, "m").exec(cpu)?.[1] ?? 0);
      const calls = (name: string) => Number(new RegExp(`^cmdstat_${name}:calls=(\\d+)`, "m").exec(commandstats)?.[1] ?? 0);
      return { total: Number(/^total_commands_processed:(\d+)/m.exec(stats)![1]), scripts: calls("evalsha") + calls("eval"), cpuS: cpuField("used_cpu_sys") + cpuField("used_cpu_user") };
    },
    async stop() {
      client.disconnect();
      proc.kill("SIGKILL");
      await exited;
    },
  };
}
