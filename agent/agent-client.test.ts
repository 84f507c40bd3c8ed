// channelReady: one try of the agent is one connection attempt, and a
// channel that failed before (the server was down) connects on the next try
// instead of failing it at once.

import assert from "node:assert/strict";
import { test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { freePort } from "../test/support/net.ts";
import { channelReady } from "./agent-client.ts";

async function startGrpcServer(port: number): Promise<grpc.Server> {
  const server = new grpc.Server();
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve())),
  );
  return server;
}

test("a channel to a server that is down fails its try promptly, then connects once the server is up", async () => {
  const port = await freePort();
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 100,
  });
  try {
    const started = Date.now();
    assert.equal(await channelReady(client.getChannel(), 5_000), false, "nothing listens yet");
    assert.ok(Date.now() - started < 2_000, `the refused try ended after ${Date.now() - started} ms, not at the timeout`);
    assert.equal(client.getChannel().getConnectivityState(false), grpc.connectivityState.TRANSIENT_FAILURE);

    const server = await startGrpcServer(port);
    try {
      assert.equal(await channelReady(client.getChannel(), 5_000), true, "the next try connects");
      assert.equal(client.getChannel().getConnectivityState(false), grpc.connectivityState.READY);
    } finally {
      server.forceShutdown();
    }
  } finally {
    client.close();
  }
});

test("a closed channel is not ready", async () => {
  const client = new grpc.Client("127.0.0.1:1", grpc.credentials.createInsecure());
  client.close();
  assert.equal(await channelReady(client.getChannel(), 1_000), false);
});
