// Summarizes a V8 .cpuprofile (node --cpu-prof): self time by function and
// by file, and total (inclusive) time of the functions under src/, so a
// missed target can be traced to what costs what.
//   node bench/lib/profile-summary.ts <file.cpuprofile> [top=25] [from-to]
// from-to (seconds since the profile started, e.g. 9.5-14) counts only the
// samples taken in that window: a scenario's drain without its set-up. The
// summary starts with the busy (not idle) ms of each second, to find it.

import { readFileSync } from "node:fs";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount: number;
  children?: number[];
}

const [file, topArg, windowArg] = process.argv.slice(2);
const profile = JSON.parse(readFileSync(file, "utf8")) as { nodes: Node[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] };
const top = Number(topArg ?? 25);
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const [from, to] = windowArg === undefined ? [0, Infinity] : windowArg.split("-").map(Number);
if (!Number.isFinite(from) || Number.isNaN(to)) throw new Error(`window "${windowArg}": write it as from-to, in seconds`);
const sampleMs = new Map<number, number>();
const busyBySecond: number[] = [];
let at = 0;
profile.samples.forEach((id, i) => {
  const ms = (profile.timeDeltas[i] ?? 0) / 1000;
  at += ms;
  const second = Math.floor(at / 1000);
  if (byId.get(id)!.callFrame.functionName !== "(idle)") busyBySecond[second] = (busyBySecond[second] ?? 0) + ms;
  if (at < from! * 1000 || at > to! * 1000) return;
  sampleMs.set(id, (sampleMs.get(id) ?? 0) + ms);
});
const total = [...sampleMs.values()].reduce((a, b) => a + b, 0);

const short = (url: string) => url.replace(/^file:\/\/\/work\/main\//, "").replace(/.*node_modules\//, "nm:");
const label = (n: Node) => `${n.callFrame.functionName || "(anonymous)"} ${short(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;

const self = new Map<string, number>();
const selfFile = new Map<string, number>();
const inclusive = new Map<string, number>();
for (const [id, ms] of sampleMs) {
  const node = byId.get(id)!;
  self.set(label(node), (self.get(label(node)) ?? 0) + ms);
  const f = short(node.callFrame.url) || node.callFrame.functionName;
  selfFile.set(f, (selfFile.get(f) ?? 0) + ms);
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const n = byId.get(cur)!;
    if (!n.callFrame.url.includes("/src/")) continue;
    const l = label(n);
    if (seen.has(l)) continue;
    seen.add(l);
    inclusive.set(l, (inclusive.get(l) ?? 0) + ms);
  }
}
const print = (title: string, map: Map<string, number>) => {
  console.log(`\n${title}`);
  for (const [k, v] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${v.toFixed(0).padStart(8)} ms ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
};
console.log(`profile ${file}: ${total.toFixed(0)} ms sampled over ${((profile.endTime - profile.startTime) / 1000).toFixed(0)} ms`);
console.log(`busy ms per second: ${Array.from(busyBySecond, (ms, second) => `${second}:${(ms ?? 0).toFixed(0)}`).join(" ")}`);
print("self time by function", self);
print("self time by file", selfFile);
print("inclusive time of src/ functions", inclusive);
