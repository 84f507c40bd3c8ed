// A Muster server with a fleet of simulated agents and a load generator, each
// in its own process, as S2, S3 and S5 use them; and the Postgres-side check
// of what became of the jobs.

import path from "node:path";
import { ROOT, startChild, type Child } from "./child.ts";
import { createPool, musterEnv, startMuster, type MusterEnv, type MusterServer } from "./muster.ts";
import { withPg } from "./stores.ts";

export interface Fleet {
  env: MusterEnv;
  server: MusterServer;
  poolId: string;
  agents: Child[];
  producer: Child;
  close(): Promise<void>;
}

export async function startFleet(options: {
  agents: number;
  capacity: number;
  /** Processes the agents are spread over. */
  agentProcesses?: number;
  mode: "finish" | "hold" | "logs";
  logChunk?: boolean;
  bytesPerS?: number;
  durationMs?: number;
  env?: Record<string, string>;
  nodeArgs?: string[];
}): Promise<Fleet> {
  const env = await musterEnv(options.env);
  const children: Child[] = [];
  try {
    const server = await startMuster(env, { nodeArgs: options.nodeArgs ?? profileArgs() });
    children.push(server.child);
    const { poolId, token } = await createPool(server.api, "bench");
    const processes = options.agentProcesses ?? 1;
    const agents: Child[] = [];
    for (let p = 0; p < processes; p++) {
      const child = startChild({ name: processes === 1 ? "agents" : `agents-${p}`, script: "bench/sim/agents.ts" });
      children.push(child);
      agents.push(child);
    }
    const producer = startChild({ name: "producer", script: "bench/sim/muster-producer.ts" });
    children.push(producer);
    await Promise.all([...agents, producer].map((c) => c.ready()));
    await Promise.all(
      agents.map((child, p) => {
        const count = Math.floor(options.agents / processes) + (p < options.agents % processes ? 1 : 0);
        return child.call("register", { url: server.agent, token, count, capacity: options.capacity, namePrefix: `sim${p}` });
      }),
    );
    return {
      env,
      server,
      poolId,
      agents,
      producer,
      async close() {
        await Promise.all(agents.map((a) => a.call("close", undefined, 5000).catch(() => undefined)));
        await stopGracefully(server.child);
        await Promise.all(children.map((c) => c.kill("SIGKILL")));
        await env.cleanup();
      },
    };
  } catch (error) {
    await Promise.all(children.map((c) => c.kill("SIGKILL")));
    await env.cleanup();
    throw error;
  }
}

export function connectAll(fleet: Fleet, args: Record<string, unknown>): Promise<Array<{ allConnectedMs: number; startedAt: number; lastWelcomeAt: number }>> {
  return Promise.all(fleet.agents.map((a) => a.call<{ allConnectedMs: number; startedAt: number; lastWelcomeAt: number }>("connect", args)));
}

/** Jobs of the run by state, from Postgres. */
export async function jobStates(schema: string): Promise<Record<string, number>> {
  return withPg(async (c) => {
    const result = await c.query(`select state, count(*)::int as n from "${schema}".jobs group by state`);
    return Object.fromEntries(result.rows.map((r: { state: string; n: number }) => [r.state, r.n]));
  });
}

export async function attemptsPerJob(schema: string): Promise<number> {
  return withPg(async (c) => {
    const result = await c.query(`select count(*)::int as n from "${schema}".job_attempts a where a.attempt > 1`);
    return result.rows[0].n as number;
  });
}

/**
 * BENCH_PROFILE=1: the server writes a V8 CPU profile to bench/results/profiles when it stops.
 * BENCH_SERVER_NODE_ARGS: more Node flags for the server, space-separated (e.g. "--heap-prof --trace-gc").
 */
export function profileArgs(): string[] {
  const extra = (process.env.BENCH_SERVER_NODE_ARGS ?? "").split(/\s+/).filter((arg) => arg !== "");
  if (process.env.BENCH_PROFILE !== "1") return extra;
  return ["--cpu-prof", `--cpu-prof-dir=${path.join(ROOT, "bench/results/profiles")}`, ...extra];
}

/** SIGTERM (the server drains and exits, writing its profile if any), SIGKILL after 10 s. */
export async function stopGracefully(child: Child): Promise<void> {
  const timer = setTimeout(() => void child.kill("SIGKILL"), 10_000);
  await child.kill("SIGTERM");
  clearTimeout(timer);
}
