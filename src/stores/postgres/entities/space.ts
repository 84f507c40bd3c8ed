// A space is the tenant boundary: every pool, worker and job names one. Its
// row exists so that ensureSpace has something to lock and conflict on.

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

export const SpaceEntity = defineEntity({
  name: "Space",
  tableName: "spaces",
  properties: {
    name: p.text().primary(),
    createdAt: p.datetime(),
  },
});

export type SpaceRow = InferEntity<typeof SpaceEntity>;
