// Submit-to-start latency: the producer's submit stamps joined with the
// workers' start stamps by job name (both on performance.timeOrigin + now()
// of processes on this machine).

import { percentile } from "./stats.ts";

export function latencyMetrics(submitted: Array<[string, number]>, arrivals: Array<[string, number]>): Record<string, number> {
  const startedAt = new Map<string, number>();
  for (const [name, t] of arrivals) if (!startedAt.has(name)) startedAt.set(name, t);
  const latencies: number[] = [];
  let missing = 0;
  for (const [name, t] of submitted) {
    const start = startedAt.get(name);
    if (start === undefined) missing++;
    else latencies.push(start - t);
  }
  latencies.sort((a, b) => a - b);
  return {
    jobs: submitted.length,
    missing,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    maxMs: latencies.length > 0 ? latencies[latencies.length - 1] : Number.NaN,
  };
}
