// Choosing the worker (DESIGN, "Choosing the worker", step 2), as a pure
// function of a snapshot and `now`. The Redis Lua script and the memory
// store make the same choice atomically; the contract suite and the table
// tests beside this file hold them to it.

export interface WorkerSnapshot {
  workerId: string;
  /** A session holds the worker's stream. */
  attached: boolean;
  /** Store clock, ms; null if it never heartbeated. */
  lastHeartbeatMs: number | null;
  /** Enabled and not draining. */
  acceptsWork: boolean;
  labels: readonly string[];
  capacity: number;
  activeLeases: number;
  /** It holds an exclusive lease: it takes nothing else until that ends. */
  holdsExclusive: boolean;
  /** Store sequence of its last lease; 0 if never leased. */
  lastLeasedSeq: number;
  /** Runs it served recently. */
  servedRuns: ReadonlySet<string>;
}

export interface ChoiceRequest {
  runId: string;
  requiredLabels: readonly string[];
  exclusive: boolean;
}

export type TieBreak = "fewest_leases" | "same_run" | "least_recently_leased";

export type Choice =
  | { ok: true; workerId: string; leasesBefore: number; eligible: number; tieBreak: TieBreak }
  | { ok: false; code: "no_healthy_worker" | "all_busy"; healthy: number; matching: number };

export function isHealthy(worker: WorkerSnapshot, now: number, heartbeatTtlMs: number): boolean {
  return (
    worker.attached &&
    worker.acceptsWork &&
    worker.lastHeartbeatMs !== null &&
    now - worker.lastHeartbeatMs < heartbeatTtlMs
  );
}

export function hasRoom(worker: WorkerSnapshot, exclusive: boolean): boolean {
  if (worker.holdsExclusive) return false;
  if (exclusive) return worker.activeLeases === 0;
  return worker.activeLeases < worker.capacity;
}

export function chooseWorker(
  workers: readonly WorkerSnapshot[],
  request: ChoiceRequest,
  now: number,
  heartbeatTtlMs: number,
): Choice {
  let healthy = 0;
  let matching = 0;
  const eligible: WorkerSnapshot[] = [];
  for (const worker of workers) {
    if (!isHealthy(worker, now, heartbeatTtlMs)) continue;
    healthy++;
    if (!request.requiredLabels.every((label) => worker.labels.includes(label))) continue;
    matching++;
    if (hasRoom(worker, request.exclusive)) eligible.push(worker);
  }
  if (eligible.length === 0) {
    return { ok: false, code: matching === 0 ? "no_healthy_worker" : "all_busy", healthy, matching };
  }
  const fewest = Math.min(...eligible.map((w) => w.activeLeases));
  const tied = eligible.filter((w) => w.activeLeases === fewest);
  const byRecency = (a: WorkerSnapshot, b: WorkerSnapshot) =>
    a.lastLeasedSeq - b.lastLeasedSeq || (a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : 0);
  let chosen: WorkerSnapshot;
  let tieBreak: TieBreak;
  const sameRun = request.runId === "" ? [] : tied.filter((w) => w.servedRuns.has(request.runId));
  if (tied.length === 1) {
    chosen = tied[0];
    tieBreak = "fewest_leases";
  } else if (sameRun.length > 0) {
    chosen = sameRun.sort(byRecency)[0];
    tieBreak = "same_run";
  } else {
    chosen = tied.sort(byRecency)[0];
    tieBreak = "least_recently_leased";
  }
  return { ok: true, workerId: chosen.workerId, leasesBefore: chosen.activeLeases, eligible: eligible.length, tieBreak };
}
