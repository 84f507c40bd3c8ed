// Jobs. A job keeps the ids of the pools, the worker it went to and the target
// it deploys to as plain columns, without foreign keys: its history must
// survive the deletion of the pool, worker or target.

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import type { FailureReason, JobState, PoolRule } from "../../../domain.ts";

export const JOB_STATES = [
  "queued",
  "assigned",
  "running",
  "succeeded",
  "failed",
  "cancelled",
  "timed_out",
] as const satisfies readonly JobState[];

export const FAILURE_REASONS = [
  "exit_code",
  "no_healthy_worker",
  "builtin_worker_disabled",
  "worker_lost",
  "spawn_failed",
  "signaled",
] as const satisfies readonly FailureReason[];

export const POOL_RULES = ["explicit", "space_default", "target_default"] as const satisfies readonly PoolRule[];

export const JobEntity = defineEntity({
  name: "Job",
  tableName: "jobs",
  properties: {
    id: p.uuid().primary(),
    space: p.text(),
    name: p.text(),
    script: p.text(),
    env: p.json<Record<string, string>>(),
    requestedPoolId: p.uuid().nullable(),
    targetId: p.uuid().nullable(),
    runId: p.text(),
    requiredLabels: p.array(),
    priority: p.integer(),
    exclusive: p.boolean(),
    timeoutMs: p.bigint("number").nullable(),
    queueTimeoutMs: p.bigint("number").nullable(),
    maxAttempts: p.integer(),
    state: p.enum(JOB_STATES),
    attempt: p.integer(),
    workerId: p.uuid().nullable(),
    exitCode: p.integer().nullable(),
    failureReason: p.enum(FAILURE_REASONS).nullable(),
    message: p.text(),
    resolvedPoolId: p.uuid().nullable(),
    poolRule: p.enum(POOL_RULES).nullable(),
    poolReason: p.text(),
    workerReason: p.text(),
    builtinWorker: p.boolean(),
    createdAt: p.datetime(),
    startedAt: p.datetime().nullable(),
    endedAt: p.datetime().nullable(),
    queueDeadline: p.datetime().nullable(),
  },
  indexes: [
    // The placement queue of a pool, in placement order; only queued rows.
    {
      name: "jobs_queue_index",
      columns: [
        { name: "resolved_pool_id" },
        { name: "priority", sort: "desc" },
        { name: "created_at" },
        { name: "id" },
      ],
      where: { state: "queued" },
    },
    // Queued jobs that asked to wait, by deadline.
    { name: "jobs_queue_deadline_index", properties: ["queueDeadline"], where: { state: "queued" } },
    // A pool's queued jobs by deadline, those without one first (as
    // -infinity): the jobs that cannot wait once the pool has no healthy
    // worker are one range of it, read without reading the queue whole.
    {
      name: "jobs_pool_queue_deadline_index",
      expression:
        `create index "jobs_pool_queue_deadline_index" on "jobs" ("resolved_pool_id", (coalesce("queue_deadline", '-infinity'::timestamptz))) ` +
        `where "state" = 'queued'`,
    },
    // Listing a space newest first (keyset on created_at, id).
    { name: "jobs_space_created_at_index", properties: ["space", "createdAt", "id"] },
  ],
});

export type JobRow = InferEntity<typeof JobEntity>;
