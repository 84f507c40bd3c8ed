import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, createClient, createRouterTransport } from "@connectrpc/connect";
import {
  ServerReflection as ServerReflectionV1,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1Alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { JobService } from "../../gen/muster/v1/job_pb.js";
import {
  createReflectionIndex,
  reflectionServiceV1,
  reflectionServiceV1Alpha,
} from "../../src/grpc/reflection-service.ts";

const index = createReflectionIndex([JobService, Health, ServerReflectionV1, ServerReflectionV1Alpha]);
const transport = createRouterTransport((router) => {
  router.service(ServerReflectionV1, reflectionServiceV1(index));
  router.service(ServerReflectionV1Alpha, reflectionServiceV1Alpha(index));
});

type Request = ServerReflectionRequest["messageRequest"];

/** Sends the requests on one stream and returns the responses. */
async function ask(...requests: Request[]): Promise<ServerReflectionResponse[]> {
  const client = createClient(ServerReflectionV1, transport);
  async function* input() {
    for (const messageRequest of requests) yield { host: "", messageRequest };
  }
  const out: ServerReflectionResponse[] = [];
  for await (const res of client.serverReflectionInfo(input())) out.push(res);
  return out;
}

function fileNames(res: ServerReflectionResponse): string[] {
  assert.equal(res.messageResponse.case, "fileDescriptorResponse");
  return res.messageResponse.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name);
}

function errorCode(res: ServerReflectionResponse): number {
  assert.equal(res.messageResponse.case, "errorResponse");
  return res.messageResponse.value.errorCode;
}

describe("reflection service", () => {
  it("lists the served services", async () => {
    const [res] = await ask({ case: "listServices", value: "" });
    assert.equal(res.messageResponse.case, "listServicesResponse");
    assert.deepEqual(
      res.messageResponse.value.service.map((s) => s.name),
      ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "muster.v1.JobService"],
    );
  });

  it("answers a service with its file and every dependency, enough to build a registry", async () => {
    const [res] = await ask({ case: "fileContainingSymbol", value: "muster.v1.JobService" });
    assert.equal(res.originalRequest?.messageRequest.case, "fileContainingSymbol");
    assert.equal(res.messageResponse.case, "fileDescriptorResponse");
    const files = res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
    assert.equal(files[0].name, "muster/v1/job.proto");
    assert.ok(files.some((f) => f.name === "google/protobuf/timestamp.proto"));
    // As grpcurl does: resolve imports by name among the files received, in any order.
    const registry = createFileRegistry(files[0], (name) => files.find((f) => f.name === name));
    const service = registry.getService("muster.v1.JobService");
    assert.ok(service);
    assert.equal(service.methods.find((m) => m.name === "SubmitJob")?.input.typeName, "muster.v1.SubmitJobRequest");
  });

  it("sends each dependency once per stream", async () => {
    const [first, second] = await ask(
      { case: "fileContainingSymbol", value: "muster.v1.JobService" },
      { case: "fileByFilename", value: "muster/v1/job.proto" },
    );
    assert.ok(fileNames(first).length > 1);
    assert.deepEqual(fileNames(second), ["muster/v1/job.proto"]);
  });

  it("finds methods, messages, fields, nested types and enum values", async () => {
    const symbols = [
      "muster.v1.JobService.SubmitJob",
      ".muster.v1.Job",
      "muster.v1.Job.state",
      "muster.v1.JOB_STATE_QUEUED",
      "grpc.health.v1.HealthCheckResponse.ServingStatus",
      "grpc.health.v1.HealthCheckResponse.SERVING",
    ];
    const answers = await ask(...symbols.map((value): Request => ({ case: "fileContainingSymbol", value })));
    assert.deepEqual(
      answers.map((res) => fileNames(res)[0]),
      ["muster/v1/job.proto", "muster/v1/job.proto", "muster/v1/job.proto", "muster/v1/job.proto", "health/v1/health.proto", "health/v1/health.proto"],
    );
  });

  it("reports lookups that fail in error_response and keeps the stream open", async () => {
    const answers = await ask(
      { case: "fileContainingSymbol", value: "muster.v1.Nope" },
      { case: "fileByFilename", value: "nope.proto" },
      { case: "fileContainingExtension", value: { containingType: "muster.v1.Job", extensionNumber: 100 } as never },
      { case: "allExtensionNumbersOfType", value: "muster.v1.Nope" },
      { case: undefined },
      { case: "allExtensionNumbersOfType", value: "muster.v1.Job" },
    );
    assert.deepEqual(answers.slice(0, 5).map(errorCode), [Code.NotFound, Code.NotFound, Code.NotFound, Code.NotFound, Code.InvalidArgument]);
    const last = answers[5].messageResponse;
    assert.equal(last.case, "allExtensionNumbersResponse");
    assert.deepEqual(last.value, { ...last.value, baseTypeName: "muster.v1.Job", extensionNumber: [] });
  });

  it("answers v1alpha clients the same way", async () => {
    const client = createClient(ServerReflectionV1Alpha, transport);
    async function* input() {
      yield { host: "", messageRequest: { case: "listServices" as const, value: "" } };
    }
    for await (const res of client.serverReflectionInfo(input())) {
      assert.equal(res.messageResponse.case, "listServicesResponse");
      assert.ok(res.messageResponse.value.service.some((s) => s.name === "muster.v1.JobService"));
    }
  });
});
