// Registration tokens: only the hash of the secret and a short display prefix
// are stored; the secret itself is shown once, at creation, and never kept.

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import { WorkerPoolEntity } from "./worker-pool.ts";

export const RegistrationTokenEntity = defineEntity({
  name: "RegistrationToken",
  tableName: "registration_tokens",
  properties: {
    id: p.uuid().primary(),
    pool: () => p.manyToOne(WorkerPoolEntity).mapToPk().deleteRule("cascade"),
    description: p.text(),
    secretHash: p.text().unique("registration_tokens_secret_hash_unique"),
    prefix: p.text(),
    createdAt: p.datetime(),
    expiresAt: p.datetime().nullable(),
    lastUsedAt: p.datetime().nullable(),
    revokedAt: p.datetime().nullable(),
  },
  indexes: [{ name: "registration_tokens_pool_id_index", properties: ["pool"] }],
});

export type RegistrationTokenRow = InferEntity<typeof RegistrationTokenEntity>;
