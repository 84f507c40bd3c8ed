// Prometheus metrics, served by the API plane on GET /metrics. Each server
// owns one registry (not prom-client's global one), so several servers in one
// test process do not collide. The scheduler and the agent plane increment
// the metrics below; nothing else registers into the registry.

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

export interface MusterMetrics {
  readonly registry: Registry;
  /** Jobs accepted by SubmitJob, by resolved pool id. */
  readonly jobsSubmitted: Counter<"pool">;
  /** Jobs that reached a terminal state, by state (SUCCEEDED, FAILED, ...). */
  readonly jobsFinished: Counter<"state">;
  /** Placement decisions, by result (assigned, builtin, queued, no_healthy_worker, ...). */
  readonly placements: Counter<"result">;
  /** Agent streams attached to this replica. */
  readonly connectedAgents: Gauge;
  /** Log chunks persisted from agents. */
  readonly logChunks: Counter;
  /** Seconds from submission to assignment to a worker. */
  readonly placementSeconds: Histogram;
}

/** Buckets from 5 ms (an idle worker on this replica) to 10 min (a job that queued for a busy pool). */
const PLACEMENT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

export function createMetrics(): MusterMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  return {
    registry,
    jobsSubmitted: new Counter({
      name: "muster_jobs_submitted_total",
      help: "Jobs submitted, by resolved worker pool.",
      labelNames: ["pool"],
      registers,
    }),
    jobsFinished: new Counter({
      name: "muster_jobs_finished_total",
      help: "Jobs that reached a terminal state, by state.",
      labelNames: ["state"],
      registers,
    }),
    placements: new Counter({
      name: "muster_placements_total",
      help: "Placement decisions, by result.",
      labelNames: ["result"],
      registers,
    }),
    connectedAgents: new Gauge({
      name: "muster_connected_agents",
      help: "Agent streams attached to this replica.",
      registers,
    }),
    logChunks: new Counter({
      name: "muster_log_chunks_total",
      help: "Log chunks persisted from agents.",
      registers,
    }),
    placementSeconds: new Histogram({
      name: "muster_placement_seconds",
      help: "Seconds from job submission to assignment to a worker.",
      buckets: PLACEMENT_BUCKETS,
      registers,
    }),
  };
}
