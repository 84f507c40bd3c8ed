// On PostgreSQL the store runs its raw statements as named prepared
// statements (store-context.ts). A migration that changes a table under them
// (another replica's, during a rolling upgrade) makes PostgreSQL refuse the
// prepared ones ("cached plan must not change result type"); the store must
// prepare them again rather than fail from then on.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";
import { MikroORM } from "@mikro-orm/postgresql";
import { quoteIdentifier } from "../../src/stores/postgres/store-context.ts";
import { createTestDatabase, TEST_DATABASE_URL, type TestDatabase } from "../support/postgres.ts";

let t: TestDatabase;

before(async () => {
  t = await createTestDatabase({ label: "prep" });
});

after(async () => {
  await t?.cleanup();
});

async function onOtherConnection(statement: string): Promise<void> {
  const orm = await MikroORM.init({ clientUrl: TEST_DATABASE_URL, entities: [], discovery: { warnWhenNoEntities: false }, pool: { min: 0, max: 1 } });
  try {
    await orm.em.fork().getConnection().execute(statement);
  } finally {
    await orm.close(true);
  }
}

test("statements prepared before a table changed run again after it", async () => {
  const pool = await t.db.pools.create({ space: "prep", name: "p", description: "" });
  const ids = Array.from({ length: 3 }, () => randomUUID());
  // Concurrent reads prepare the statement on every pooled connection.
  const before = await Promise.all(Array.from({ length: 30 }, (_, i) => t.db.jobs.get(ids[i % ids.length]!)));
  assert.deepEqual(before, Array(30).fill(null));
  assert.equal((await t.db.jobs.queueStats(pool.id)).queued, 0);

  await onOtherConnection(`alter table ${quoteIdentifier(t.schema)}.jobs add column added_by_a_later_version text`);

  const after = await Promise.all(Array.from({ length: 30 }, (_, i) => t.db.jobs.get(ids[i % ids.length]!)));
  assert.deepEqual(after, Array(30).fill(null));
  assert.equal((await t.db.jobs.queueStats(pool.id)).queued, 0);
});
