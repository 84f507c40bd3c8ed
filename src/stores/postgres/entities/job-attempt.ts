// One row per placement of a job. Every message about a job carries
// (job id, attempt), which is this table's primary key.

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import type { AttemptState } from "../../../domain.ts";
import { JobEntity } from "./job.ts";

export const ATTEMPT_STATES = ["assigned", "running", "ended"] as const satisfies readonly AttemptState[];

export const JobAttemptEntity = defineEntity({
  name: "JobAttempt",
  tableName: "job_attempts",
  properties: {
    job: () => p.manyToOne(JobEntity).mapToPk().primary().deleteRule("cascade"),
    attempt: p.integer().primary(),
    workerId: p.uuid(),
    state: p.enum(ATTEMPT_STATES),
    assignedAt: p.datetime(),
    acceptedAt: p.datetime().nullable(),
    endedAt: p.datetime().nullable(),
    outcome: p.text().nullable(),
    exitCode: p.integer().nullable(),
    lastSeq: p.integer(),
  },
  primaryKeys: ["job", "attempt"],
  indexes: [
    // Live attempts (assigned or running), overall and per worker.
    { name: "job_attempts_live_index", properties: ["workerId"], where: "state <> 'ended'" },
  ],
});

export type JobAttemptRow = InferEntity<typeof JobAttemptEntity>;
