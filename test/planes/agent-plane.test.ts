import assert from "node:assert/strict";
import http2 from "node:http2";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  Health,
  HealthCheckRequestSchema,
  type HealthCheckResponse,
  HealthCheckResponse_ServingStatus as Wire,
} from "../../gen/health/v1/health_pb.js";
import { AgentService, type RegisterRequest, RegisterRequestSchema, RegisterResponseSchema } from "../../gen/muster/v1/agent_pb.js";
import { createAgentPlaneServer, type AgentPlaneServer } from "../../src/agent-plane/agent-plane-server.ts";
import { CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES } from "../../src/agent-plane/http2-windows.ts";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";
import { createHealthStatus, type HealthStatus } from "../../src/grpc/health-service.ts";
import { silentLogger } from "../../src/logger.ts";
import { bufCurl, tcpHandlesAfterSettling } from "./plane-helpers.ts";

interface HealthClient extends grpc.Client {
  check(
    request: ReturnType<typeof create<typeof HealthCheckRequestSchema>>,
    callback: (error: grpc.ServiceError | null, response?: HealthCheckResponse) => void,
  ): grpc.ClientUnaryCall;
  watch(request: ReturnType<typeof create<typeof HealthCheckRequestSchema>>): grpc.ClientReadableStream<HealthCheckResponse>;
}

const HealthClientConstructor = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(Health), "Health");

function healthClient(port: number): HealthClient {
  return new HealthClientConstructor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as HealthClient;
}

function check(client: HealthClient, service: string): Promise<HealthCheckResponse> {
  return new Promise((resolve, reject) =>
    client.check(create(HealthCheckRequestSchema, { service }), (error, response) => (error ? reject(error) : resolve(response!))),
  );
}

/** A HealthStatus that counts live watchers, to see that a cancelled Watch lets go. */
function countingHealth(): HealthStatus & { watchers(): number } {
  const inner = createHealthStatus();
  let watchers = 0;
  return {
    ...inner,
    watch(service, listener) {
      watchers++;
      const stop = inner.watch(service, listener);
      return () => {
        watchers--;
        stop();
      };
    },
    watchers: () => watchers,
  };
}

describe("agent plane server", () => {
  let plane: AgentPlaneServer;
  let port: number;
  let client: HealthClient;
  const health = countingHealth();

  before(async () => {
    plane = createAgentPlaneServer({ host: "127.0.0.1", port: 0, logger: silentLogger(), health });
    plane.addService(grpcJsServiceDefinition(AgentService), {
      register(call: grpc.ServerUnaryCall<RegisterRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
        callback(null, create(RegisterResponseSchema, { workerId: `worker-${call.request.name}`, credential: "c" }));
      },
    });
    ({ port } = await plane.start());
    client = healthClient(port);
  });

  after(async () => {
    client.close();
    await plane.close();
  });

  it("lets an agent send half a megabyte on its stream before it must wait for the server to read", async () => {
    // HTTP/2's default 64 KiB windows make an agent writing 1 MB/s of log wait a server round trip per chunk.
    const session = http2.connect(`http://127.0.0.1:${port}`);
    try {
      const settings = await new Promise<http2.Settings>((resolve, reject) => {
        session.once("remoteSettings", resolve);
        session.once("error", reject);
      });
      assert.equal(settings.initialWindowSize, STREAM_WINDOW_BYTES);
      const deadline = Date.now() + 2000;
      while ((session.state.remoteWindowSize ?? 0) < CONNECTION_WINDOW_BYTES && Date.now() < deadline) await sleep(10);
      assert.ok((session.state.remoteWindowSize ?? 0) >= CONNECTION_WINDOW_BYTES, `connection window ${session.state.remoteWindowSize}`);
    } finally {
      session.close();
    }
  });

  it("answers Health/Check to a grpc-js client", async () => {
    assert.equal((await check(client, "")).status, Wire.SERVING);
    await assert.rejects(check(client, "muster.v1.Nope"), (error: grpc.ServiceError) => {
      assert.equal(error.code, grpc.status.NOT_FOUND);
      return true;
    });
  });

  it("streams Health/Watch changes and lets go of the watch when the client cancels", async () => {
    const call = client.watch(create(HealthCheckRequestSchema, { service: "muster.v1.AgentService" }));
    const seen: Wire[] = [];
    const cancelled = new Promise<grpc.ServiceError>((resolve) => call.on("error", resolve));
    await new Promise<void>((resolve) => {
      call.on("data", (res: HealthCheckResponse) => {
        seen.push(res.status);
        if (seen.length === 1) health.set("muster.v1.AgentService", "SERVING");
        if (seen.length === 2) resolve();
      });
    });
    assert.deepEqual(seen, [Wire.SERVICE_UNKNOWN, Wire.SERVING]);
    assert.equal(health.watchers(), 1);
    call.cancel();
    assert.equal((await cancelled).code, grpc.status.CANCELLED);
    for (let i = 0; i < 50 && health.watchers() > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(health.watchers(), 0, "the server-side watch ended with the call");
  });

  it("serves the agent's native grpc-js service beside health", async () => {
    const Agent = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(AgentService), "AgentService");
    const agent = new Agent(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      register(request: unknown, callback: (error: grpc.ServiceError | null, response?: { workerId: string }) => void): void;
    };
    try {
      const res = await new Promise<{ workerId: string }>((resolve, reject) =>
        agent.register(create(RegisterRequestSchema, { name: "w1" }), (error, response) => (error ? reject(error) : resolve(response!))),
      );
      assert.equal(res.workerId, "worker-w1");
    } finally {
      agent.close();
    }
  });

  it("describes AgentService and health through reflection (buf curl)", async () => {
    const methods = (await bufCurl(port, ["--list-methods"])).trim().split("\n");
    for (const method of ["muster.v1.AgentService/Register", "muster.v1.AgentService/Connect", "grpc.health.v1.Health/Watch"]) {
      assert.ok(methods.includes(method), `${method} in ${methods.join(", ")}`);
    }
    const out = await bufCurl(port, ["-d", '{"service": ""}'], "/grpc.health.v1.Health/Check");
    assert.deepEqual(JSON.parse(out), { status: "SERVING" });
  });
});

describe("agent plane shutdown", () => {
  it("drain ends health watches and stops accepting; close leaves no socket open", async () => {
    const plane = createAgentPlaneServer({ host: "127.0.0.1", port: 0, logger: silentLogger(), health: createHealthStatus() });
    const { port } = await plane.start();
    const client = healthClient(port);
    const call = client.watch(create(HealthCheckRequestSchema, { service: "" }));
    await new Promise((resolve) => call.once("data", resolve));
    const ended = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
    call.on("error", () => undefined);

    const started = Date.now();
    await plane.drain(5_000);
    assert.ok(Date.now() - started < 2_000, "drain finishes when the connections close, before the grace ends");
    assert.equal((await ended).code, grpc.status.UNAVAILABLE);
    await assert.rejects(check(client, ""), (error: grpc.ServiceError) => {
      assert.equal(error.code, grpc.status.UNAVAILABLE);
      return true;
    });

    client.close();
    await plane.close();
    assert.equal(plane.state, "closed");
    assert.deepEqual(await tcpHandlesAfterSettling(), []);
  });
});
