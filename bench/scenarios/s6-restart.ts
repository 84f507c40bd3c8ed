// S6: the server restarts under N connected agents that each run one job.
// The server is killed (SIGKILL, a crash or an OOM kill; a deploy's SIGTERM
// is gentler) and started again on the same agent port; the simulated agents
// reconnect with the real agent's jittered backoff and list their running
// attempts in Hello. Measured: from the kill to every agent welcomed with its
// attempt adopted; then every job is finished and must end SUCCEEDED once.

import { startChild, type Child } from "../lib/child.ts";
import { addProcessMetrics, addServerMetrics, emptyFigure, type Scenario } from "../lib/figure.ts";
import { createPool, freePort, musterEnv, startMuster } from "../lib/muster.ts";
import { jobStates } from "../lib/muster-fleet.ts";

const SCENARIO = "s6";

export const s6: Scenario = {
  id: SCENARIO,
  title: "S6 server restart under N connected agents, each running a job",
  sizes: {
    full: { agents: 1000, processes: 2 },
    smoke: { agents: 20, processes: 2 },
  },
  columns: [
    { key: "serverStartMs", label: "server start ms" },
    { key: "allAdoptedMs", label: "kill to all adopted ms" },
    { key: "adopted", label: "adopted" },
    { key: "abandoned", label: "abandoned" },
    { key: "serverCpuS", label: "new server CPU s" },
    { key: "serverPeakRssMB", label: "new server peak RSS MB" },
  ],
  targets: [{ key: "allAdoptedMs", op: "<=", bound: 5000, label: "all reconnected and adopted within 5 s" }],
  systems: {
    async muster(size, run) {
      const figure = emptyFigure(SCENARIO, "muster", `${size.agents} agents`, run);
      const env = await musterEnv();
      const children: Child[] = [];
      try {
        const agentPort = await freePort();
        const first = await startMuster(env, { agentPort, name: "muster-server-1" });
        children.push(first.child);
        const { poolId, token } = await createPool(first.api, "restart");
        const fleets = Array.from({ length: size.processes }, (_, p) => startChild({ name: `agents-${p}`, script: "bench/sim/agents.ts" }));
        const producer = startChild({ name: "producer", script: "bench/sim/muster-producer.ts" });
        children.push(...fleets, producer);
        await Promise.all([...fleets, producer].map((f) => f.ready()));
        const per = Math.ceil(size.agents / size.processes);
        const counts = fleets.map((_, p) => Math.min(per, size.agents - p * per));
        await Promise.all(fleets.map((f, p) => f.call("register", { url: first.agent, token, count: counts[p], capacity: 1, namePrefix: `rs${p}` })));
        await Promise.all(fleets.map((f) => f.call("connect", { mode: "hold", timeoutMs: 60_000 })));
        const submitted = await producer.call<{ errors: number; firstError: string }>("closed", { api: first.api, poolId, count: size.agents, concurrency: 16, namePrefix: "held" }, 600_000);
        if (submitted.errors > 0) figure.errors.push(`${submitted.errors} submits failed: ${submitted.firstError}`);
        await Promise.all(fleets.map((f, p) => f.call("waitFor", { running: counts[p], timeoutMs: 300_000 }, 310_000)));
        await Promise.all(fleets.map((f) => f.call("resetCounters")));

        const killedAt = performance.timeOrigin + performance.now();
        await first.child.kill("SIGKILL");
        const second = await startMuster(env, { agentPort, name: "muster-server" });
        children.push(second.child);
        figure.metrics.serverStartMs = performance.timeOrigin + performance.now() - killedAt;
        const adopted = await Promise.all(
          fleets.map((f, p) => f.call<{ adopted: number; abandoned: number; lastWelcomeAt: number }>("waitFor", { adopted: counts[p], connected: counts[p], timeoutMs: 60_000 }, 70_000)),
        );
        figure.metrics.allAdoptedMs = Math.max(...adopted.map((a) => a.lastWelcomeAt)) - killedAt;
        figure.metrics.adopted = adopted.reduce((a, s) => a + s.adopted, 0);
        figure.metrics.abandoned = adopted.reduce((a, s) => a + s.abandoned, 0);
        figure.processes = { "muster-server": await second.child.probe() };
        const finished = await Promise.all(fleets.map((f) => f.call<{ duplicates: number }>("finishAll", { timeoutMs: 120_000 }, 130_000)));
        figure.duplicated = finished.reduce((a, s) => a + s.duplicates, 0);
        const states = await jobStates(env.schema);
        figure.lost = size.agents - (states.succeeded ?? 0);
        if (figure.lost !== 0) figure.notes.push(`job states: ${JSON.stringify(states)}`);
        addProcessMetrics(figure, { "muster-server": "server" });
        addServerMetrics(figure);
        await Promise.all(fleets.map((f) => f.call("close", undefined, 5000).catch(() => undefined)));
      } finally {
        await Promise.all(children.map((c) => c.kill("SIGKILL")));
        await env.cleanup();
      }
      return [figure];
    },
  },
};
