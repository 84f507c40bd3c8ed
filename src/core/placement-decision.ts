// What to do with a queued job given the state of its resolved pool: run it
// on the built-in worker, lease a pool worker, wait, or fail. Pure; the
// placer (src/scheduler/job-placer.ts) carries the decision out.

import type { FailureReason } from "../domain.ts";
import type { Choice } from "./choose-worker.ts";

/** Step 1 of "Choosing the worker": does the built-in worker take this job? */
export type Route = { kind: "builtin" } | { kind: "pool" } | { kind: "fail"; reason: FailureReason; message: string };

export function routeJob(input: {
  poolIsSpaceDefault: boolean;
  poolName: string;
  registeredWorkers: number;
  builtinEnabled: boolean;
}): Route {
  if (!input.poolIsSpaceDefault || input.registeredWorkers > 0) return { kind: "pool" };
  if (input.builtinEnabled) return { kind: "builtin" };
  return {
    kind: "fail",
    reason: "builtin_worker_disabled",
    message: `default pool ${input.poolName} has no registered workers and the built-in worker is disabled`,
  };
}

export type Outcome =
  | { kind: "leased"; workerId: string; reason: string }
  | { kind: "wait"; reason: string }
  | { kind: "fail"; reason: FailureReason; message: string };

function workers(n: number): string {
  return n === 1 ? "1 healthy worker" : `${n} healthy workers`;
}

function labelText(labels: readonly string[]): string {
  return labels.length === 0 ? "" : ` with labels ${labels.join(", ")}`;
}

/**
 * Jobs ahead of a queued job are counted up to this many: the count reads
 * one index entry per job ahead, and a backlog of 100,000 jobs must not cost
 * every read of a queued job 100,000 of them.
 */
export const JOBS_AHEAD_COUNTED = 1000;

/** How a queued job's wait reads, with the live count of jobs ahead of it (at most JOBS_AHEAD_COUNTED). */
export function waitingReason(stored: string, poolName: string, jobsAhead: number): string {
  const base = stored === "" ? `pool ${poolName}: waiting in the queue` : stored;
  const ahead =
    jobsAhead >= JOBS_AHEAD_COUNTED
      ? `${JOBS_AHEAD_COUNTED.toLocaleString("en-US")} or more jobs`
      : jobsAhead === 1
        ? "1 job"
        : `${jobsAhead} jobs`;
  return `${base}; ${ahead} ahead`;
}

/**
 * Steps 2 and 3 of "Choosing the worker", given the store's atomic choice.
 * `queueDeadline`: the job asked to wait for a healthy worker until then.
 */
export function decideOnChoice(input: {
  choice: Choice;
  poolName: string;
  targetName: string | null;
  requiredLabels: readonly string[];
  exclusive?: boolean;
  queueDeadlineMs: number | null;
  now: number;
}): Outcome {
  const { choice, poolName } = input;
  if (choice.ok) {
    const why =
      choice.tieBreak === "fewest_leases"
        ? `fewest active leases (${choice.leasesBefore})`
        : choice.tieBreak === "same_run"
          ? `tied at ${choice.leasesBefore} active leases; it already served this run`
          : `tied at ${choice.leasesBefore} active leases; least recently leased`;
    return {
      kind: "leased",
      workerId: choice.workerId,
      reason: `${why} among ${choice.eligible} eligible workers in pool ${poolName}`,
    };
  }
  if (choice.code === "all_busy") {
    const busy = input.exclusive ? "none idle for an exclusive job" : "all at capacity";
    return { kind: "wait", reason: `pool ${poolName}: ${workers(choice.matching)}${labelText(input.requiredLabels)}, ${busy}` };
  }
  const via = input.targetName === null ? "" : ` (default pool of target ${input.targetName})`;
  const what =
    choice.healthy === 0
      ? `pool ${poolName}${via} has no healthy worker`
      : `pool ${poolName}${via} has ${workers(choice.healthy)} but none${labelText(input.requiredLabels).replace(" with", " carries")}`;
  if (input.queueDeadlineMs !== null && input.now < input.queueDeadlineMs) {
    // The deadline, not the time left: the reason reads the same on every
    // pass, so a waiting job's row is not rewritten each time the pool is drained.
    const until = new Date(input.queueDeadlineMs).toISOString().replace(/\.\d{3}Z$/, "Z");
    return { kind: "wait", reason: `${what}; waiting for one until ${until}` };
  }
  return { kind: "fail", reason: "no_healthy_worker", message: what };
}
