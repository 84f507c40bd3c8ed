// The job state machine's transitions and what an agent's finish report
// means for the job. Pure.

import type { FailureReason, JobState } from "../domain.ts";

export type FinishOutcomeName = "exited" | "signaled" | "cancelled" | "timed_out" | "spawn_failed";

export interface FinishFacts {
  outcome: FinishOutcomeName;
  exitCode: number;
  signal: string;
  message: string;
}

export interface JobOutcome {
  state: JobState;
  exitCode: number | null;
  failureReason: FailureReason | null;
  message: string;
}

export function outcomeOfFinish(facts: FinishFacts): JobOutcome {
  switch (facts.outcome) {
    case "exited":
      return facts.exitCode === 0
        ? { state: "succeeded", exitCode: 0, failureReason: null, message: "exited with code 0" }
        : {
            state: "failed",
            exitCode: facts.exitCode,
            failureReason: "exit_code",
            message: `exited with code ${facts.exitCode}`,
          };
    case "signaled":
      return {
        state: "failed",
        exitCode: null,
        failureReason: "signaled",
        message: `killed by signal ${facts.signal || "unknown"}`,
      };
    case "cancelled":
      return { state: "cancelled", exitCode: null, failureReason: null, message: facts.message || "cancelled" };
    case "timed_out":
      return { state: "timed_out", exitCode: null, failureReason: null, message: facts.message || "timed out" };
    case "spawn_failed":
      return {
        state: "failed",
        exitCode: null,
        failureReason: "spawn_failed",
        message: `could not start the script: ${facts.message || "unknown error"}`,
      };
  }
}

const TRANSITIONS: Record<JobState, readonly JobState[]> = {
  queued: ["assigned", "failed", "cancelled"],
  assigned: ["running", "queued", "succeeded", "failed", "cancelled", "timed_out"],
  running: ["queued", "succeeded", "failed", "cancelled", "timed_out"],
  succeeded: [],
  failed: [],
  cancelled: [],
  timed_out: [],
};

/** States a job may move to `to` from. Used as the fence of a transition. */
export function statesBefore(to: JobState): JobState[] {
  return (Object.keys(TRANSITIONS) as JobState[]).filter((from) => TRANSITIONS[from].includes(to));
}

export function canTransition(from: JobState, to: JobState): boolean {
  return TRANSITIONS[from].includes(to);
}
