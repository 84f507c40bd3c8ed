// Registered workers. Only the hash of the worker credential is stored. A
// worker row goes away with its pool (a forced pool delete).

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import type { WorkerState } from "../../../domain.ts";
import { WorkerPoolEntity } from "./worker-pool.ts";

export const WORKER_STATES = ["enabled", "disabled", "draining"] as const satisfies readonly WorkerState[];

export const WorkerEntity = defineEntity({
  name: "Worker",
  tableName: "workers",
  properties: {
    id: p.uuid().primary(),
    space: p.text(),
    pool: () => p.manyToOne(WorkerPoolEntity).mapToPk().deleteRule("cascade"),
    name: p.text(),
    labels: p.array(),
    capacity: p.integer(),
    state: p.enum(WORKER_STATES),
    credentialHash: p.text().unique("workers_credential_hash_unique"),
    hostname: p.text(),
    agentVersion: p.text(),
    createdAt: p.datetime(),
    lastSeenAt: p.datetime().nullable(),
  },
  indexes: [
    { name: "workers_pool_id_index", properties: ["pool"] },
    { name: "workers_space_created_at_index", properties: ["space", "createdAt"] },
  ],
});

export type WorkerRow = InferEntity<typeof WorkerEntity>;
