// S1: N connected idle agents heartbeating every 5 s (the default): server
// memory per agent, server CPU, Redis commands per second, and how long it
// takes them all to connect. Agents are simulated, each with its own channel
// (own TCP connection) and stream, in two processes. Muster runs on a
// private redis-server here so its own command rate can be counted exactly.

import { startChild, type Child } from "../lib/child.ts";
import { addProcessMetrics, addServerMetrics, emptyFigure, openWindow, type Scenario } from "../lib/figure.ts";
import { createPool, musterEnv, startMuster } from "../lib/muster.ts";
import { profileArgs, stopGracefully } from "../lib/muster-fleet.ts";
import { startPrivateRedis } from "../lib/private-redis.ts";

const SCENARIO = "s1";

export const s1: Scenario = {
  id: SCENARIO,
  title: "S1 idle agents: N connected agents heartbeating every 5 s",
  sizes: {
    full: { agents: 1000, windowMs: 20_000, processes: 2 },
    smoke: { agents: 50, windowMs: 2000, processes: 2 },
  },
  columns: [
    { key: "allConnectedMs", label: "all connected ms" },
    { key: "kbPerAgent", label: "server KB/agent" },
    { key: "serverCpuPct", label: "server CPU % of a core" },
    { key: "serverEldP99Ms", label: "server loop p99 ms" },
    { key: "redisCmdPerSMuster", label: "Redis cmd/s (Muster's own, incl. in scripts)" },
    { key: "redisScriptCallsPerS", label: "Redis script calls/s" },
    { key: "pgCommitsPerS", label: "PG commits/s" },
    { key: "agentsCpuS", label: "agents CPU s" },
  ],
  targets: [
    { key: "kbPerAgent", op: "<=", bound: 60, label: "<= 60 KB per agent" },
    { key: "serverCpuPct", op: "<=", bound: 5, label: "<= 5% of one core" },
    { key: "redisCmdPerSMuster", op: "<=", bound: 250, label: "<= 250 Redis commands/s" },
    { key: "allConnectedMs", op: "<=", bound: 3000, label: "all connected within 3 s" },
  ],
  systems: {
    async muster(size, run) {
      const figure = emptyFigure(SCENARIO, "muster", `${size.agents} agents`, run);
      const redis = await startPrivateRedis();
      const env = await musterEnv({ MUSTER_HEARTBEAT_INTERVAL_MS: "5000", MUSTER_REDIS_URL: redis.url });
      const children: Child[] = [];
      try {
        const server = await startMuster(env, { nodeArgs: profileArgs() });
        children.push(server.child);
        const { token } = await createPool(server.api, "idle");
        const fleets = Array.from({ length: size.processes }, (_, p) => startChild({ name: `agents-${p}`, script: "bench/sim/agents.ts" }));
        children.push(...fleets);
        await Promise.all(fleets.map((f) => f.ready()));
        const per = Math.ceil(size.agents / size.processes);
        await Promise.all(fleets.map((f, p) => f.call("register", { url: server.agent, token, count: Math.min(per, size.agents - p * per), capacity: 4, namePrefix: `idle${p}` })));
        const before = await server.child.probe({ gc: true });
        const connected = await Promise.all(fleets.map((f) => f.call<{ startedAt: number; lastWelcomeAt: number }>("connect", { mode: "finish", timeoutMs: 60_000 })));
        figure.metrics.allConnectedMs = Math.max(...connected.map((c) => c.lastWelcomeAt)) - Math.min(...connected.map((c) => c.startedAt));
        // Let the connect burst settle (sessions attached, first heartbeats) before measuring.
        await new Promise((resolve) => setTimeout(resolve, 2000));
        const window = await openWindow([server.child, ...fleets]);
        const commandsBefore = await redis.commands();
        await new Promise((resolve) => setTimeout(resolve, size.windowMs));
        const commandsAfter = await redis.commands();
        const w = await window.close();
        figure.processes = w.processes;
        figure.servers = w.servers;
        const after = await server.child.probe({ gc: true });
        figure.metrics.kbPerAgent = (after.rssBytes - before.rssBytes) / 1024 / size.agents;
        figure.metrics.serverCpuPct = (100 * w.processes["muster-server"].cpuS) / w.seconds;
        figure.metrics.agentsCpuS = fleets.reduce((a, f) => a + w.processes[f.name].cpuS, 0);
        addProcessMetrics(figure, { "muster-server": "server" });
        addServerMetrics(figure);
        // The INFO call at the end of the window is one of them.
        figure.metrics.redisCmdPerSMuster = (commandsAfter.total - commandsBefore.total - 2) / (size.windowMs / 1000);
        figure.metrics.redisScriptCallsPerS = (commandsAfter.scripts - commandsBefore.scripts) / (size.windowMs / 1000);
        const stats = await Promise.all(fleets.map((f) => f.call<{ connected: number; streamErrors: number }>("stats")));
        const still = stats.reduce((a, s) => a + s.connected, 0);
        if (still !== size.agents) figure.errors.push(`${size.agents - still} agents dropped during the window`);
        await Promise.all(fleets.map((f) => f.call("close", undefined, 5000).catch(() => undefined)));
        await stopGracefully(server.child);
      } finally {
        await Promise.all(children.map((c) => c.kill("SIGKILL")));
        await env.cleanup();
        await redis.stop();
      }
      return [figure];
    },
  },
};
