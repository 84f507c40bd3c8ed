import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Wire } from "../../gen/health/v1/health_pb.js";
import { createHealthStatus, healthService, type HealthStatus } from "../../src/grpc/health-service.ts";

function healthClient(health: HealthStatus) {
  return createClient(Health, createRouterTransport((router) => router.service(Health, healthService(health))));
}

describe("health service", () => {
  it("reports the overall status as SERVING by default", async () => {
    const client = healthClient(createHealthStatus());
    assert.equal((await client.check({ service: "" })).status, Wire.SERVING);
  });

  it("answers NOT_FOUND for a service it does not know", async () => {
    const client = healthClient(createHealthStatus());
    await assert.rejects(client.check({ service: "muster.v1.Nope" }), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.NotFound);
      return true;
    });
  });

  it("lists every known service", async () => {
    const health = createHealthStatus();
    health.set("muster.v1.JobService", "NOT_SERVING");
    const { statuses } = await healthClient(health).list({});
    assert.deepEqual(
      Object.fromEntries(Object.entries(statuses).map(([name, s]) => [name, s.status])),
      { "": Wire.SERVING, "muster.v1.JobService": Wire.NOT_SERVING },
    );
  });

  it("streams changes to a watcher, starting with SERVICE_UNKNOWN, until the call is aborted", async () => {
    const health = createHealthStatus();
    const client = healthClient(health);
    const abort = new AbortController();
    const seen: Wire[] = [];
    const watching = (async () => {
      try {
        for await (const res of client.watch({ service: "muster.v1.JobService" }, { signal: abort.signal })) {
          seen.push(res.status);
          if (seen.length === 1) health.set("muster.v1.JobService", "SERVING");
          if (seen.length === 2) {
            health.set("muster.v1.JobService", "SERVING"); // no change: not sent
            health.set("muster.v1.JobService", "NOT_SERVING");
          }
          if (seen.length === 3) abort.abort();
        }
      } catch (error) {
        assert.equal(ConnectError.from(error).code, Code.Canceled);
      }
    })();
    await watching;
    assert.deepEqual(seen, [Wire.SERVICE_UNKNOWN, Wire.SERVING, Wire.NOT_SERVING]);
  });

  it("goes NOT_SERVING on shutdown and ignores later updates", () => {
    const health = createHealthStatus();
    health.set("muster.v1.JobService", "SERVING");
    health.shutdown();
    health.set("", "SERVING");
    assert.equal(health.get(""), "NOT_SERVING");
    assert.equal(health.get("muster.v1.JobService"), "NOT_SERVING");
  });
});
