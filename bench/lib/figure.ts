// One measured run of one system in one scenario, as printed and as kept in
// bench/results/*.json, and the bookkeeping that goes with every run:
// probes reset at the start of the measured window and read at its end, the
// shared servers' counters over the same window, and their background rate.

import type { Child } from "./child.ts";
import type { ProbeReading } from "./probe.ts";
import { readCounters, rates, type CounterRates, type ServerCounters } from "./stores.ts";

export interface Figure {
  scenario: string;
  system: string;
  /** Case within the scenario (rate, lease count, ...); "" when there is one. */
  variant: string;
  run: number;
  warmup: boolean;
  metrics: Record<string, number>;
  processes: Record<string, ProbeReading>;
  servers: CounterRates;
  lost: number;
  duplicated: number;
  errors: string[];
  notes: string[];
}

export interface Window {
  /** Ends the window: reads every probe and the servers' counters. */
  close(): Promise<{ processes: Record<string, ProbeReading>; servers: CounterRates; seconds: number }>;
}

/** Starts a measured window over these processes. */
export async function openWindow(children: Child[]): Promise<Window> {
  await Promise.all(children.map((child) => child.probe({ reset: true })));
  const from: ServerCounters = await readCounters();
  return {
    async close() {
      const to = await readCounters();
      const readings = await Promise.all(children.map((child) => child.probe()));
      const processes: Record<string, ProbeReading> = {};
      children.forEach((child, i) => {
        processes[child.name] = readings[i];
      });
      return { processes, servers: rates(from, to), seconds: (to.at - from.at) / 1000 };
    },
  };
}

export interface SystemRun {
  (size: Record<string, number>, run: number): Promise<Figure[]>;
}

export interface Scenario {
  id: string;
  title: string;
  /** Full and smoke sizes; a CLI flag --name value overrides one. */
  sizes: { full: Record<string, number>; smoke: Record<string, number> };
  systems: Record<string, SystemRun>;
  /** Metric columns of the table, in order, with how to read them. */
  columns: Array<{ key: string; label: string }>;
  /** Muster's targets, checked on the medians: key -> [op, bound]. */
  targets?: Array<{ variant?: string; key: string; op: "<=" | ">="; bound: number; label: string }>;
}

export function emptyFigure(scenario: string, system: string, variant: string, run: number): Figure {
  return {
    scenario,
    system,
    variant,
    run,
    warmup: run === 0,
    metrics: {},
    processes: {},
    servers: { redisCommandsPerS: 0, redisCpuShare: 0, pgCommitsPerS: 0, pgWriteXactsPerS: 0, pgCpuShare: 0, redisCommands: 0, pgCommits: 0 },
    lost: 0,
    duplicated: 0,
    errors: [],
    notes: [],
  };
}

/** Copies per-process figures into metrics (cpu s, peak RSS MB, loop delay p99 ms) under the process's role. */
export function addProcessMetrics(figure: Figure, roles: Record<string, string>): void {
  for (const [name, reading] of Object.entries(figure.processes)) {
    const role = roles[name];
    if (role === undefined) continue;
    figure.metrics[`${role}CpuS`] = reading.cpuS;
    figure.metrics[`${role}CpuSystemS`] = reading.cpuSystemS;
    figure.metrics[`${role}PeakRssMB`] = reading.peakRssBytes / 1024 / 1024;
    figure.metrics[`${role}EldP99Ms`] = reading.eldP99Ms;
  }
}

/** The shared servers' rates over the window, as table columns. */
export function addServerMetrics(figure: Figure): void {
  figure.metrics.redisCmdPerS = figure.servers.redisCommandsPerS;
  figure.metrics.redisCpuShare = figure.servers.redisCpuShare;
  figure.metrics.pgCommitsPerS = figure.servers.pgCommitsPerS;
  figure.metrics.pgWriteXactsPerS = figure.servers.pgWriteXactsPerS;
  figure.metrics.pgCpuShare = figure.servers.pgCpuShare;
}
