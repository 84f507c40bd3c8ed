// An independent client: @grpc/grpc-js with @grpc/proto-loader reading
// proto/ at run time, sharing no generated code with the server. If the
// server's wire format, paths or status codes drift from the .proto files,
// this is where it shows.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { loadConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/logger.ts";
import { startServer, type MusterServer } from "../../src/server.ts";
import { createTestSchema, type TestSchema } from "../support/postgres.ts";

const PROTO_DIR = path.resolve(import.meta.dirname, "../../proto");

type Callback<T> = (error: grpc.ServiceError | null, response: T) => void;
type UnaryMethod = (request: object, callback: Callback<Record<string, unknown>>) => void;
type GrpcClient = grpc.Client & Record<string, UnaryMethod & ((request: object) => grpc.ClientReadableStream<Record<string, unknown>>)>;

function call(client: GrpcClient, method: string, request: object): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    client[method](request, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function callError(client: GrpcClient, method: string, request: object): Promise<grpc.ServiceError> {
  try {
    await call(client, method, request);
  } catch (error) {
    return error as grpc.ServiceError;
  }
  assert.fail(`${method} succeeded but should have failed`);
}

describe("an independent grpc-js + proto-loader client", () => {
  let schema: TestSchema;
  let dir: string;
  let server: MusterServer;
  let pools: GrpcClient;
  let jobs: GrpcClient;

  before(async () => {
    schema = await createTestSchema("interop");
    dir = await mkdtemp(path.join(tmpdir(), "muster-interop-"));
    const config = loadConfig(["--api-addr", "127.0.0.1:0", "--agent-addr", "127.0.0.1:0"], {
      MUSTER_DATABASE_URL: schema.url,
      MUSTER_DATABASE_SCHEMA: schema.schema,
      MUSTER_DATA_DIR: dir,
    });
    server = await startServer(config, silentLogger());
    const definition = protoLoader.loadSync(["muster/v1/worker_pool.proto", "muster/v1/job.proto"], {
      includeDirs: [PROTO_DIR],
      keepCase: false,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      muster: { v1: Record<string, new (address: string, credentials: grpc.ChannelCredentials) => GrpcClient> };
    };
    const address = `${server.api.host}:${server.api.port}`;
    pools = new loaded.muster.v1.WorkerPoolService(address, grpc.credentials.createInsecure());
    jobs = new loaded.muster.v1.JobService(address, grpc.credentials.createInsecure());
  });

  after(async () => {
    pools?.close();
    jobs?.close();
    await server?.close();
    await schema?.drop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  test("creates and reads a pool; the token is shown once", async () => {
    const created = await call(pools, "createWorkerPool", { name: "interop", description: "from proto-loader" });
    const pool = created.workerPool as Record<string, unknown>;
    assert.equal(pool.name, "interop");
    assert.equal(pool.isDefault, false);
    assert.match(String(created.registrationToken), /^mreg_/);
    const got = await call(pools, "getWorkerPool", { id: pool.id });
    assert.deepEqual((got.workerPool as Record<string, unknown>).id, pool.id);
    assert.equal(JSON.stringify(got).includes(String(created.registrationToken)), false, "the token never comes back");
    const listed = await call(pools, "listWorkerPools", {});
    const names = (listed.workerPools as Array<Record<string, unknown>>).map((p) => p.name).sort();
    assert.deepEqual(names, ["default", "interop"]);
  });

  test("errors carry the gRPC codes of the contract", async () => {
    assert.equal((await callError(pools, "createWorkerPool", { name: "interop" })).code, grpc.status.ALREADY_EXISTS);
    assert.equal((await callError(pools, "createWorkerPool", { name: "" })).code, grpc.status.INVALID_ARGUMENT);
    assert.equal((await callError(pools, "getWorkerPool", { id: "8d1c9a3e-1111-4222-8333-944455556666" })).code, grpc.status.NOT_FOUND);
    assert.equal((await callError(jobs, "getJob", { id: "not-a-job" })).code, grpc.status.NOT_FOUND);
    assert.equal((await callError(jobs, "submitJob", { name: "x", script: "" })).code, grpc.status.INVALID_ARGUMENT);
    const big = "x".repeat(1024 * 1024 + 1);
    assert.equal((await callError(jobs, "submitJob", { name: "x", script: big })).code, grpc.status.RESOURCE_EXHAUSTED);
  });

  test("submits a job to the built-in worker and streams its log", async () => {
    const submitted = await call(jobs, "submitJob", { name: "interop", script: "printf 'one\\ntwo\\n'" });
    const id = (submitted.job as Record<string, unknown>).id as string;
    let job: Record<string, unknown> = {};
    for (let i = 0; i < 100; i++) {
      job = (await call(jobs, "getJob", { id })).job as Record<string, unknown>;
      if (job.state === "JOB_STATE_SUCCEEDED" || job.state === "JOB_STATE_FAILED") break;
      await sleep(100);
    }
    assert.equal(job.state, "JOB_STATE_SUCCEEDED");
    assert.equal((job.placement as Record<string, unknown>).builtinWorker, true);
    assert.equal((job.placement as Record<string, unknown>).poolRule, "POOL_RULE_SPACE_DEFAULT");
    const chunks: Buffer[] = [];
    const stream = jobs.getJobLogs({ jobId: id, fromSeq: "0", follow: true });
    for await (const response of stream) chunks.push((response.chunk as { data: Buffer }).data);
    assert.equal(Buffer.concat(chunks).toString("utf8"), "one\ntwo\n");
  });
});
