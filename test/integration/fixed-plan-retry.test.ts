// The fixed-plan connections (open-database.ts) that PostgreSQL refused at
// start for a passing reason are opened later, and the job transitions move
// to them. The database is reached through a loopback proxy that drops every
// connection asking for the fixed-plan settings until the test lets them
// through; the proxy counts what each kind of connection carries.

import assert from "node:assert/strict";
import net from "node:net";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { pino } from "pino";
import type { Database } from "../../src/stores/database.ts";
import { openDatabase } from "../../src/stores/postgres/open-database.ts";
import { plainJob } from "../support/jobs.ts";
import { createTestSchema, TEST_DATABASE_URL, type TestSchema } from "../support/postgres.ts";
import { waitUntil } from "../support/wait.ts";

let schema: TestSchema;
let proxy: net.Server;
const state = { refuseFixed: true, refused: 0, fixedBytesIn: 0 };
const sockets = new Set<net.Socket>();

before(async () => {
  schema = await createTestSchema("fixedretry");
  const upstream = new URL(TEST_DATABASE_URL);
  proxy = net.createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.once("data", (startup) => {
      // The startup message carries the connection's options, settings included.
      const fixed = startup.includes("plan_cache_mode");
      if (fixed && state.refuseFixed) {
        state.refused++;
        client.destroy();
        return;
      }
      const server = net.connect(Number(upstream.port || 5432), upstream.hostname);
      sockets.add(server);
      server.on("close", () => sockets.delete(server));
      server.on("error", () => client.destroy());
      client.on("error", () => server.destroy());
      server.write(startup);
      client.on("data", (chunk: Buffer) => {
        if (fixed) state.fixedBytesIn += chunk.length;
      });
      client.pipe(server);
      server.pipe(client);
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
});

after(async () => {
  for (const socket of sockets) socket.destroy();
  await new Promise<void>((resolve) => proxy.close(() => resolve()));
  await schema?.drop();
});

test("fixed-plan connections refused at start open on a later try, and transitions then run on them", async () => {
  const events: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(line: Buffer, _encoding, done) {
      events.push(JSON.parse(line.toString()) as Record<string, unknown>);
      done();
    },
  });
  const url = `postgresql://postgres@127.0.0.1:${(proxy.address() as net.AddressInfo).port}/test`;
  const db: Database = await openDatabase({ url, schema: schema.schema, logger: pino({ level: "info" }, sink), fixedPlanRetryMs: 50 });
  try {
    assert.ok(state.refused > 0, "the proxy refused the fixed-plan connections");
    const unavailable = events.find((e) => e.event === "fixed_plans_unavailable");
    assert.ok(unavailable !== undefined, "the refusal is logged");
    assert.equal(unavailable.retryInMs, 50, "with when it is tried again");

    // Meanwhile transitions run, on the main pool.
    const pool = await db.pools.create({ space: "fixedretry", name: "p", description: "" });
    const first = await db.jobs.create(plainJob({ space: "fixedretry", resolvedPoolId: pool.id }));
    assert.equal((await db.jobs.transition(first.id, { states: ["queued"], attempt: 0 }, { state: "cancelled" }))?.state, "cancelled");
    assert.equal(state.fixedBytesIn, 0);

    state.refuseFixed = false;
    await waitUntil("fixed-plan connections open", async () => (events.some((e) => e.event === "fixed_plans_available") ? true : undefined));
    const before = state.fixedBytesIn;
    const second = await db.jobs.create(plainJob({ space: "fixedretry", resolvedPoolId: pool.id }));
    assert.equal((await db.jobs.transition(second.id, { states: ["queued"], attempt: 0 }, { state: "cancelled" }))?.state, "cancelled");
    assert.ok(state.fixedBytesIn > before, "the transition went over a fixed-plan connection");
  } finally {
    await db.close();
  }
});
