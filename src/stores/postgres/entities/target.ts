// Cloud targets: what steps deploy to without running an agent there. A
// target's name is unique in its space. Its default pool is a real foreign
// key (ON DELETE RESTRICT): deleting a pool that targets still name is refused
// by the pool repository, or clears those defaults first in the same transaction.

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import { SpaceEntity } from "./space.ts";
import { WorkerPoolEntity } from "./worker-pool.ts";

export const TargetEntity = defineEntity({
  name: "Target",
  tableName: "targets",
  properties: {
    id: p.uuid().primary(),
    space: () => p.manyToOne(SpaceEntity).mapToPk().fieldName("space"),
    name: p.text(),
    description: p.text(),
    defaultPool: () => p.manyToOne(WorkerPoolEntity).mapToPk().nullable().deleteRule("restrict"),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
  },
  uniques: [{ name: "targets_space_name_unique", properties: ["space", "name"] }],
  indexes: [{ name: "targets_default_pool_id_index", properties: ["defaultPool"] }],
});

export type TargetRow = InferEntity<typeof TargetEntity>;
