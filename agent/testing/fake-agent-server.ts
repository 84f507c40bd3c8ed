// A small fake AgentService for agent tests: a grpc-js server on 127.0.0.1
// port 0, served from the same protobuf-es descriptors as the real agent
// plane. It records what the agent sends and lets a test script the replies.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import {
  AgentService,
  ConnectResponseSchema,
  RegisterResponseSchema,
  type AgentLogChunk,
  type ConnectRequest,
  type ConnectResponse,
  type FinishReport,
  type Hello,
  type RegisterRequest,
  type RegisterResponse,
} from "../../gen/muster/v1/agent_pb.js";
import { grpcJsServiceDefinition } from "../../src/grpc/grpcjs-service.ts";

export type Outgoing = ConnectRequest["message"];
export type Incoming = MessageInitShape<typeof ConnectResponseSchema>["message"];

export const CREDENTIAL = "worker_credential_secret";

export async function until<T>(probe: () => T | undefined | false, what: string, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export interface FakeStream {
  authorization: string;
  hello: Hello | null;
  received: Outgoing[];
  ended: boolean;
  send(message: Incoming): void;
  fail(code: grpc.status, details: string): void;
  logs(): AgentLogChunk[];
  finishes(): FinishReport[];
}

export interface FakeServer {
  address: string;
  registrations: RegisterRequest[];
  streams: FakeStream[];
  /** Decides each Connect: null accepts it, a status rejects it. */
  admit: (authorization: string) => { code: grpc.status; details: string } | null;
  register: (request: RegisterRequest) => RegisterResponse | { code: grpc.status; details: string };
  close(): Promise<void>;
}

export async function startFakeServer(): Promise<FakeServer> {
  const server = new grpc.Server();
  const fake: FakeServer = {
    address: "",
    registrations: [],
    streams: [],
    admit: (authorization) => (authorization === `Bearer ${CREDENTIAL}` ? null : { code: grpc.status.UNAUTHENTICATED, details: "unknown credential" }),
    register: (request) =>
      request.registrationToken === "good-token"
        ? create(RegisterResponseSchema, { workerId: "worker-1", credential: CREDENTIAL, workerPoolId: "pool-1", space: "default" })
        : { code: grpc.status.UNAUTHENTICATED, details: "registration token is unknown, expired or revoked" },
    async close() {
      for (const stream of fake.streams) if (!stream.ended) stream.fail(grpc.status.UNAVAILABLE, "server shutting down");
      server.forceShutdown();
    },
  };
  server.addService(grpcJsServiceDefinition(AgentService), {
    register(call: grpc.ServerUnaryCall<RegisterRequest, RegisterResponse>, callback: grpc.sendUnaryData<RegisterResponse>) {
      fake.registrations.push(call.request);
      const result = fake.register(call.request);
      if ("code" in result) callback({ code: result.code, details: result.details });
      else callback(null, result);
    },
    connect(call: grpc.ServerDuplexStream<ConnectRequest, ConnectResponse>) {
      const authorization = call.metadata.get("authorization")[0]?.toString() ?? "";
      const stream: FakeStream = {
        authorization,
        hello: null,
        received: [],
        ended: false,
        send(message) {
          if (!stream.ended) call.write(create(ConnectResponseSchema, { message }));
        },
        fail(code, details) {
          if (stream.ended) return;
          stream.ended = true;
          call.emit("error", { code, details });
        },
        logs: () => stream.received.filter((m) => m.case === "log").map((m) => m.value as AgentLogChunk),
        finishes: () => stream.received.filter((m) => m.case === "finish").map((m) => m.value as FinishReport),
      };
      fake.streams.push(stream);
      const refused = fake.admit(authorization);
      if (refused !== null) {
        stream.fail(refused.code, refused.details);
        return;
      }
      call.on("data", (request: ConnectRequest) => {
        if (request.message.case === "hello" && stream.hello === null) stream.hello = request.message.value;
        else stream.received.push(request.message);
      });
      call.on("end", () => {
        if (!stream.ended) {
          stream.ended = true;
          call.end();
        }
      });
      call.on("error", () => {
        stream.ended = true;
      });
    },
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  fake.address = `127.0.0.1:${port}`;
  return fake;
}

/** Welcome adopting whatever the Hello said is running, as a server that kept every lease would. */
export function welcome(stream: FakeStream, extra: { maxChunkBytes?: number } = {}): void {
  stream.send({
    case: "welcome",
    value: {
      workerId: "worker-1",
      heartbeatInterval: durationFromMs(100),
      leaseTtl: durationFromMs(30_000),
      adopted: stream.hello?.running ?? [],
      maxChunkBytes: extra.maxChunkBytes ?? 1024,
    },
  });
}

export function assignment(jobId: string, script: string, extra: { timeoutMs?: number; env?: Record<string, string> } = {}): Incoming {
  return {
    case: "assignment",
    value: {
      jobId,
      attempt: 1,
      name: `${jobId}-name`,
      script,
      env: extra.env ?? {},
      runId: "run-9",
      timeout: extra.timeoutMs === undefined ? undefined : durationFromMs(extra.timeoutMs),
    },
  };
}

/** The first stream opened after `mark` (a length of server.streams) whose Hello arrived. */
export function helloAfter(server: FakeServer, mark: number): Promise<FakeStream> {
  return until(() => server.streams.slice(mark).find((s) => s.hello !== null), "a Hello on a new stream");
}

/** Acknowledges every chunk and finish report the stream received so far. */
export function ackEverything(stream: FakeStream): void {
  const last = stream.logs().at(-1);
  if (last !== undefined) stream.send({ case: "ack", value: { jobId: last.jobId, attempt: last.attempt, seq: last.seq } });
  for (const finish of stream.finishes()) {
    stream.send({ case: "ack", value: { jobId: finish.jobId, attempt: finish.attempt, seq: finish.lastSeq, finished: true } });
  }
}
