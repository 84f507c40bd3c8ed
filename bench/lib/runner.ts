// Runs scenarios: a warm-up run, then --runs measured runs, systems
// interleaved within each run (so a neighbour's load on this shared machine
// hits every system alike); prints one table of medians (min-max) per
// scenario and writes every raw figure to bench/results/<time>.json.
//
//   node bench/run-all.ts [--runs 3] [--systems muster,bullmq] [--smoke] [--<size> n]
//
// --smoke: the scenarios' tiny sizes, one run and no warm-up; exits non-zero
// on any lost or duplicated job or any error. Without --smoke a missed
// target is reported, not fatal.

import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { cpus, totalmem } from "node:os";
import { killAll, ROOT } from "./child.ts";
import type { Figure, Scenario } from "./figure.ts";
import { format, formatSummary, summarize, table } from "./stats.ts";
import { background, withPg } from "./stores.ts";

interface Flags {
  runs: number;
  smoke: boolean;
  systems: string[] | null;
  sizes: Record<string, number>;
  warmup: boolean;
}

function parseFlags(argv: string[]): Flags {
  const flags: Flags = { runs: 3, smoke: false, systems: null, sizes: {}, warmup: true };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--smoke") flags.smoke = true;
    else if (arg === "--no-warmup") flags.warmup = false;
    else if (arg === "--runs") flags.runs = Number(argv[++i]);
    else if (arg === "--systems") flags.systems = argv[++i].split(",");
    else if (arg.startsWith("--")) {
      const [name, inline] = arg.slice(2).split("=");
      const value = Number(inline ?? argv[++i]);
      if (!Number.isFinite(value)) throw new Error(`--${name} needs a number`);
      flags.sizes[name] = value;
    } else throw new Error(`unexpected argument ${arg}`);
  }
  if (flags.smoke) {
    flags.runs = 1;
    flags.warmup = false;
  }
  return flags;
}

function describeMachine() {
  const cpu = cpus();
  return { cpus: cpu.length, cpuModel: cpu[0]?.model ?? "", memoryGB: Math.round(totalmem() / 2 ** 30), node: process.version, platform: process.platform };
}

function failures(figure: Figure): string[] {
  const problems = [...figure.errors];
  if (figure.lost !== 0) problems.push(`${figure.lost} jobs lost`);
  if (figure.duplicated !== 0) problems.push(`${figure.duplicated} jobs duplicated`);
  return problems;
}

export function report(scenario: Scenario, figures: Figure[]): string {
  const measured = figures.filter((f) => !f.warmup);
  const groups = new Map<string, Figure[]>();
  for (const figure of measured) {
    const key = `${figure.variant}\u0000${figure.system}`;
    groups.set(key, [...(groups.get(key) ?? []), figure]);
  }
  const columns = scenario.columns.filter((c) => measured.some((f) => Number.isFinite(f.metrics[c.key])));
  const headers = ["system", ...(measured.some((f) => f.variant !== "") ? ["case"] : []), ...columns.map((c) => c.label), "lost", "dup", "runs"];
  const rows: string[][] = [];
  for (const group of groups.values()) {
    const first = group[0];
    rows.push([
      first.system,
      ...(headers[1] === "case" ? [first.variant] : []),
      ...columns.map((c) => formatSummary(group.map((f) => f.metrics[c.key]))),
      String(group.reduce((a, f) => a + f.lost, 0)),
      String(group.reduce((a, f) => a + f.duplicated, 0)),
      String(group.length),
    ]);
  }
  const lines = [`## ${scenario.title}`, "", table(headers, rows)];
  for (const target of scenario.targets ?? []) {
    const values = measured.filter((f) => f.system === "muster" && (target.variant === undefined || f.variant === target.variant)).map((f) => f.metrics[target.key]);
    if (values.length === 0) continue;
    const { median } = summarize(values);
    const met = target.op === "<=" ? median <= target.bound : median >= target.bound;
    lines.push(`- target ${target.variant ? `${target.variant} ` : ""}${target.label}: median ${format(median)} -> ${met ? "MET" : "MISSED"}`);
  }
  const problems = figures.flatMap((f) => failures(f).map((p) => `${f.system}${f.variant ? ` ${f.variant}` : ""} run ${f.run}: ${p}`));
  for (const problem of problems) lines.push(`- PROBLEM ${problem}`);
  for (const f of measured) for (const note of f.notes) lines.push(`- note ${f.system} run ${f.run}: ${note}`);
  return lines.join("\n");
}

export async function main(scenarios: Scenario[], argv = process.argv.slice(2)): Promise<void> {
  const flags = parseFlags(argv);
  const started = new Date();
  const syncCommit = await withPg(async (c) => (await c.query("show synchronous_commit")).rows[0].synchronous_commit as string);
  const bg = flags.smoke ? null : await background(2000);
  const output: { machine: unknown; startedAt: string; flags: Flags; synchronousCommit: string; background: unknown; scenarios: Record<string, Figure[]> } = {
    machine: describeMachine(),
    startedAt: started.toISOString(),
    flags,
    synchronousCommit: syncCommit,
    background: bg,
    scenarios: {},
  };
  if (syncCommit !== "on") console.warn(`warning: synchronous_commit is ${syncCommit}; the Postgres figures are not durable`);
  if (bg !== null) {
    console.log(`background on the shared servers before the run: Redis ${format(bg.redisCommandsPerS)} cmd/s, Postgres ${format(bg.pgCommitsPerS)} commits/s and ${format(bg.pgCpuShare)} cores of CPU`);
  }
  const failed: string[] = [];
  const onSignal = () => {
    killAll().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    for (const scenario of scenarios) {
      const size = { ...(flags.smoke ? scenario.sizes.smoke : scenario.sizes.full), ...flags.sizes };
      const systems = Object.keys(scenario.systems).filter((s) => flags.systems === null || flags.systems.includes(s));
      const figures: Figure[] = [];
      output.scenarios[scenario.id] = figures;
      const first = flags.warmup ? 0 : 1;
      const t0 = Date.now();
      for (let run = first; run <= flags.runs; run++) {
        for (const system of systems) {
          const label = `${scenario.id} ${system} ${run === 0 ? "warm-up" : `run ${run}/${flags.runs}`}`;
          process.stdout.write(`${label} ...`);
          const t = Date.now();
          try {
            const got = await scenario.systems[system](size, run);
            for (const figure of got) figure.warmup = run === 0;
            figures.push(...got);
            const problems = got.flatMap(failures);
            process.stdout.write(` ${((Date.now() - t) / 1000).toFixed(1)} s${problems.length ? ` (${problems.join("; ")})` : ""}\n`);
            if (problems.length) failed.push(...problems.map((p) => `${label}: ${p}`));
          } catch (error) {
            process.stdout.write(" FAILED\n");
            console.error((error as Error).stack ?? error);
            failed.push(`${label}: ${(error as Error).message.split("\n")[0]}`);
            await killAll();
          }
        }
      }
      console.log(`\n${report(scenario, figures)}\n(${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
    }
  } finally {
    await killAll();
    const dir = path.join(ROOT, "bench/results");
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, `${flags.smoke ? "smoke" : "bench"}-${started.toISOString().replace(/[:.]/g, "-")}.json`);
    await writeFile(file, JSON.stringify(output, null, 2));
    console.log(`raw figures: ${path.relative(ROOT, file)}`);
  }
  if (failed.length > 0) {
    console.error(`\n${failed.length} problem(s):\n${failed.map((f) => `  ${f}`).join("\n")}`);
    if (flags.smoke) process.exitCode = 1;
  }
  if (flags.smoke) console.log(failed.length === 0 ? "bench smoke: every scenario ran with no lost or duplicated job" : "bench smoke: FAILED");
}
