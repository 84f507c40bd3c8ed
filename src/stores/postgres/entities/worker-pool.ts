// Worker pools. The schema itself keeps two invariants: a name is unique in
// its space, and a space has at most one default pool (a partial unique index).

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import { SpaceEntity } from "./space.ts";

export const WorkerPoolEntity = defineEntity({
  name: "WorkerPool",
  tableName: "worker_pools",
  properties: {
    id: p.uuid().primary(),
    space: () => p.manyToOne(SpaceEntity).mapToPk().fieldName("space"),
    name: p.text(),
    description: p.text(),
    isDefault: p.boolean(),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
    // Read-only: how many workers are registered in the pool, computed on load.
    workerCount: p
      .formula<number>(
        (columns, table) =>
          `(select count(*)::int from ${table.schema ? `"${table.schema}".` : ""}"workers" w where w.pool_id = ${columns.id})`,
      )
      .type("integer")
      .persist(false),
  },
  uniques: [
    { name: "worker_pools_space_name_unique", properties: ["space", "name"] },
    { name: "worker_pools_one_default_per_space", properties: ["space"], where: { isDefault: true } },
  ],
});

export type WorkerPoolRow = InferEntity<typeof WorkerPoolEntity>;
