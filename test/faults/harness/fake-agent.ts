// A scripted agent for the scenarios a real agent never produces: reports
// about jobs it does not hold, oversized chunks, assignments it ignores, a
// stream it stops reading. It speaks the real protocol through the agent's
// own gRPC client; the test decides every message. close() cancels the
// stream and clears the heartbeat timer.

import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import {
  ConnectRequestSchema,
  HeartbeatSchema,
  HelloSchema,
  RegisterRequestSchema,
  type ConnectRequest,
  type ConnectResponse,
} from "../../../gen/muster/v1/agent_pb.js";
import { createAgentClient, type AgentClient, type AgentStream } from "../../../agent/agent-client.ts";

type Message = ConnectResponse["message"];
type MessageCase = NonNullable<Message["case"]>;
type CaseValue<C extends MessageCase> = Extract<Message, { case: C }>["value"];

export interface StreamEnd {
  code: number;
  details: string;
}

export interface FakeAgent {
  readonly workerId: string;
  readonly credential: string;
  readonly client: AgentClient;
  readonly received: ConnectResponse["message"][];
  /** Resolves when the stream ends, with its status. */
  readonly ended: Promise<StreamEnd>;
  readonly stream: AgentStream;
  send(message: ConnectRequest["message"]): void;
  waitFor<C extends MessageCase>(kind: C, predicate?: (value: CaseValue<C>) => boolean, timeoutMs?: number): Promise<CaseValue<C>>;
  /** Stops or restarts heartbeats (they keep the worker healthy). */
  setHeartbeats(on: boolean): void;
  close(): void;
}

export interface FakeAgentOptions {
  url: string;
  /** Register with this token, or reuse an identity. */
  token?: string;
  identity?: { workerId: string; credential: string };
  name?: string;
  capacity?: number;
  heartbeatMs?: number;
  /** Send Hello (default true); false leaves the stream open without it. */
  hello?: boolean;
}

export async function startFakeAgent(options: FakeAgentOptions): Promise<FakeAgent> {
  const client = createAgentClient(options.url, { initialReconnectBackoffMs: 100, maxReconnectBackoffMs: 400 });
  let identity = options.identity;
  if (identity === undefined) {
    const registered = await client.register(
      create(RegisterRequestSchema, {
        registrationToken: options.token ?? "",
        name: options.name ?? `fake-${randomUUID().slice(0, 8)}`,
        capacity: options.capacity ?? 1,
        hostname: "fake",
        agentVersion: "fake",
      }),
    );
    identity = { workerId: registered.workerId, credential: registered.credential };
  }
  const stream = client.connect(identity.credential);
  const received: ConnectResponse["message"][] = [];
  const waiters = new Set<() => void>();
  let heartbeat: NodeJS.Timeout | null = null;
  const ended = new Promise<StreamEnd>((resolve) => {
    stream.on("status", (s: { code: number; details: string }) => resolve({ code: s.code, details: s.details }));
    stream.on("error", (e: { code?: number; details?: string; message: string }) => resolve({ code: e.code ?? -1, details: e.details ?? e.message }));
  });
  void ended.then(() => {
    if (heartbeat !== null) clearInterval(heartbeat);
    heartbeat = null;
  });
  stream.on("data", (response: ConnectResponse) => {
    received.push(response.message);
    for (const waiter of waiters) waiter();
  });
  const send = (message: ConnectRequest["message"]) => {
    stream.write(create(ConnectRequestSchema, { message }));
  };
  const setHeartbeats = (on: boolean) => {
    if (heartbeat !== null) clearInterval(heartbeat);
    heartbeat = null;
    if (!on) return;
    heartbeat = setInterval(() => send({ case: "heartbeat", value: create(HeartbeatSchema, { time: timestampNow(), draining: false }) }), options.heartbeatMs ?? 200);
    heartbeat.unref();
  };

  const fake: FakeAgent = {
    workerId: identity.workerId,
    credential: identity.credential,
    client,
    received,
    ended,
    stream,
    send,
    setHeartbeats,
    async waitFor<C extends MessageCase>(kind: C, predicate: (value: CaseValue<C>) => boolean = () => true, timeoutMs = 10_000) {
      const find = () => received.find((m) => m.case === kind && predicate(m.value as CaseValue<C>))?.value as CaseValue<C> | undefined;
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = find();
        if (found !== undefined) return found;
        if (Date.now() > deadline) throw new Error(`fake agent: no ${kind} within ${timeoutMs} ms; got ${received.map((m) => m.case).join(", ")}`);
        await Promise.race([new Promise<void>((resolve) => waiters.add(resolve)), sleep(50)]);
        waiters.clear();
      }
    },
    close() {
      setHeartbeats(false);
      stream.cancel();
      client.close();
    },
  };
  stream.on("error", () => {});
  if (options.hello !== false) {
    send({
      case: "hello",
      value: create(HelloSchema, { workerId: identity.workerId, sessionId: randomUUID(), capacity: options.capacity ?? 1, labels: [], running: [] }),
    });
    await fake.waitFor("welcome");
    setHeartbeats(true);
  }
  return fake;
}
