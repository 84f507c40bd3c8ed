import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { ServerReflection, ServerReflectionRequestSchema } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { Health, HealthCheckRequestSchema } from "../../gen/health/v1/health_pb.js";
import { addConnectService } from "../../src/grpc/grpcjs-adapter.ts";
import { tcpHandlesAfterSettling } from "./plane-helpers.ts";

const BIG_RESPONSES = 1_000;
const BIG_RESPONSE_BYTES = 64 * 1024;

describe("grpc-js adapter for connect-es services", () => {
  const server = new grpc.Server();
  let port: number;
  let sessions: Http2SessionManager;
  let produced = 0;
  const watchAbortCodes: Code[] = [];

  /** A Health whose methods exercise the adapter rather than report health. */
  const probe: ServiceImpl<typeof Health> = {
    check({ service }, context: HandlerContext) {
      context.responseHeader.set("x-handler", "probe");
      context.responseTrailer.set("x-trailer", "t");
      if (service === "plain-error") throw new Error("boom");
      if (service === "connect-error") {
        throw new ConnectError("no such worker", Code.PermissionDenied, { "x-reason": "wrong-worker" }, [
          { desc: HealthCheckRequestSchema, value: { service: "detail" } },
        ]);
      }
      return { status: 1 };
    },
    async *watch(_request, context) {
      yield { status: 1 };
      await new Promise((resolve) => context.signal.addEventListener("abort", resolve, { once: true }));
      watchAbortCodes.push(ConnectError.from(context.signal.reason).code);
    },
    list() {
      return { statuses: {} };
    },
  };

  /** A bidi stream answering its first request with many large messages, counting how many it produced. */
  const flood: ServiceImpl<typeof ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const _ of requests) {
        for (let i = 0; i < BIG_RESPONSES; i++) {
          produced++;
          yield { messageResponse: { case: "fileDescriptorResponse", value: { fileDescriptorProto: [new Uint8Array(BIG_RESPONSE_BYTES)] } } };
        }
      }
    },
  };

  before(async () => {
    addConnectService(server, Health, probe);
    addConnectService(server, ServerReflection, flood);
    port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    sessions = new Http2SessionManager(`http://127.0.0.1:${port}`);
  });

  after(async () => {
    sessions.abort();
    server.forceShutdown();
    assert.deepEqual(await tcpHandlesAfterSettling(), []);
  });

  const health = () => createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}`, sessionManager: sessions }));

  it("returns the response with the handler's headers and trailers", async () => {
    let header: Headers | undefined;
    let trailer: Headers | undefined;
    const res = await health().check({ service: "" }, { onHeader: (h) => (header = h), onTrailer: (t) => (trailer = t) });
    assert.equal(res.status, 1);
    assert.equal(header?.get("x-handler"), "probe");
    assert.equal(trailer?.get("x-trailer"), "t");
  });

  it("turns a ConnectError into its gRPC status, with metadata and details", async () => {
    await assert.rejects(health().check({ service: "connect-error" }), (error: unknown) => {
      const connectError = ConnectError.from(error);
      assert.equal(connectError.code, Code.PermissionDenied);
      assert.equal(connectError.rawMessage, "no such worker");
      assert.equal(connectError.metadata.get("x-reason"), "wrong-worker");
      assert.deepEqual(connectError.findDetails(HealthCheckRequestSchema).map((d) => d.service), ["detail"]);
      return true;
    });
  });

  it("turns any other error into UNKNOWN, as connect-node does", async () => {
    await assert.rejects(health().check({ service: "plain-error" }), (error: unknown) => {
      assert.equal(ConnectError.from(error).code, Code.Unknown);
      return true;
    });
  });

  it("aborts the handler's signal when the client's deadline passes", async () => {
    const seen: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const res of health().watch({ service: "" }, { timeoutMs: 200 })) seen.push(res.status);
      })(),
      (error: unknown) => {
        assert.equal(ConnectError.from(error).code, Code.DeadlineExceeded);
        return true;
      },
    );
    assert.deepEqual(seen, [1]);
    for (let i = 0; i < 50 && watchAbortCodes.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    // The server's own deadline timer and the client's cancel race; either way
    // the handler's signal is aborted exactly once.
    assert.equal(watchAbortCodes.length, 1);
    assert.ok([Code.DeadlineExceeded, Code.Canceled].includes(watchAbortCodes[0]), `abort code ${watchAbortCodes[0]}`);
  });

  it("stops producing stream messages while the client does not read, and resumes when it does", async () => {
    // A raw HTTP/2 client, because the grpc-js client reads ahead into memory
    // whether or not the application reads; this one leaves the bytes unread.
    const session = http2.connect(`http://127.0.0.1:${port}`);
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "content-type": "application/grpc",
        te: "trailers",
      });
      const request = toBinary(ServerReflectionRequestSchema, create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } }));
      const frame = Buffer.alloc(5 + request.length);
      frame.writeUInt32BE(request.length, 1);
      frame.set(request, 5);
      stream.write(frame);
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.ok(produced < BIG_RESPONSES / 10, `produced ${produced} of ${BIG_RESPONSES} messages nobody read`);

      let bytes = 0;
      let trailers: http2.IncomingHttpHeaders = {};
      stream.on("trailers", (t) => (trailers = t));
      stream.on("data", (chunk: Buffer) => (bytes += chunk.length));
      stream.end();
      await new Promise((resolve) => stream.on("end", resolve));
      assert.equal(trailers["grpc-status"], "0");
      assert.equal(produced, BIG_RESPONSES);
      assert.ok(bytes > BIG_RESPONSES * BIG_RESPONSE_BYTES);
    } finally {
      session.close();
    }
  });
});
