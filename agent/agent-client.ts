// The agent's gRPC client for AgentService: a grpc-js client built from the
// protobuf-es service (one codegen for both planes), with keepalive so a dead
// server or a silently dropped NAT mapping is noticed within a minute, and
// typed wrappers for the two RPCs. One channel per agent, closed by close().

import * as grpc from "@grpc/grpc-js";
import {
  AgentService,
  type ConnectRequest,
  type ConnectResponse,
  type RegisterRequest,
  type RegisterResponse,
} from "../gen/muster/v1/agent_pb.js";
import { grpcJsServiceDefinition } from "../src/grpc/grpcjs-service.ts";

/** Ping the server this often when the connection is quiet. */
const KEEPALIVE_TIME_MS = 30_000;
/** A ping unanswered for this long closes the connection (and ends the stream). */
const KEEPALIVE_TIMEOUT_MS = 10_000;
const REGISTER_DEADLINE_MS = 15_000;

export type AgentStream = grpc.ClientDuplexStream<ConnectRequest, ConnectResponse>;

export interface AgentClient {
  /** Rejects with a grpc.ServiceError (see its code); aborting the signal cancels the call. */
  register(request: RegisterRequest, signal?: AbortSignal): Promise<RegisterResponse>;
  /** Opens the Connect stream with the credential as a Bearer authorization. */
  connect(credential: string): AgentStream;
  /** See channelReady: has the channel connect now, waiting at most `timeoutMs`. */
  ready(timeoutMs: number): Promise<boolean>;
  close(): void;
}

/**
 * Has the channel try to connect now and waits until it is READY, or until
 * that try has failed, or `timeoutMs`. True when READY.
 *
 * Why: after a refused connection a grpc-js channel stays in
 * TRANSIENT_FAILURE, and a call made then fails at once without trying; it
 * only starts the next connection. An agent coming back after a server
 * restart would need two tries, each after its backoff delay, to get one
 * stream. Asking the channel to connect just before the call, and waiting
 * for the outcome, makes one try cost one connection attempt, as before,
 * and the call then finds the channel connected.
 */
export function channelReady(channel: Pick<grpc.Channel, "getConnectivityState" | "watchConnectivityState">, timeoutMs: number): Promise<boolean> {
  const { READY, TRANSIENT_FAILURE, CONNECTING, SHUTDOWN } = grpc.connectivityState;
  const deadline = Date.now() + timeoutMs;
  let tried = false;
  return new Promise((resolve) => {
    const check = () => {
      let state: grpc.connectivityState;
      try {
        state = channel.getConnectivityState(true);
      } catch {
        resolve(false); // closed
        return;
      }
      if (state === READY) return resolve(true);
      if (state === SHUTDOWN || (tried && state === TRANSIENT_FAILURE)) return resolve(false);
      if (state === CONNECTING) tried = true;
      if (Date.now() >= deadline) return resolve(false);
      channel.watchConnectivityState(state, deadline, (error?: Error) => (error === undefined ? check() : resolve(false)));
    };
    check();
  });
}

const AgentServiceClient = grpc.makeGenericClientConstructor(grpcJsServiceDefinition(AgentService), "AgentService");

type UntypedClient = grpc.Client & {
  register(
    request: RegisterRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: RegisterResponse) => void,
  ): grpc.ClientUnaryCall;
  connect(metadata: grpc.Metadata): AgentStream;
};

export interface AgentClientOptions {
  /**
   * The channel's own reconnect backoff. The agent paces its reconnects
   * itself (backoff.ts); a call made while the channel still waits out its
   * backoff fails at once without trying, so the channel's wait must never
   * exceed the agent's shortest delay, or the two would compound.
   */
  initialReconnectBackoffMs: number;
  maxReconnectBackoffMs: number;
}

export function createAgentClient(url: string, options: AgentClientOptions): AgentClient {
  const client = new AgentServiceClient(url, grpc.credentials.createInsecure(), {
    "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
    "grpc.keepalive_timeout_ms": KEEPALIVE_TIMEOUT_MS,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.initial_reconnect_backoff_ms": options.initialReconnectBackoffMs,
    "grpc.max_reconnect_backoff_ms": options.maxReconnectBackoffMs,
  }) as unknown as UntypedClient;

  return {
    register(request, signal) {
      return new Promise((resolve, reject) => {
        const call = client.register(
          request,
          new grpc.Metadata(),
          { deadline: Date.now() + REGISTER_DEADLINE_MS },
          (error, response) => {
            signal?.removeEventListener("abort", onAbort);
            if (error !== null) reject(error);
            else resolve(response!);
          },
        );
        function onAbort() {
          call.cancel();
        }
        if (signal?.aborted) call.cancel();
        else signal?.addEventListener("abort", onAbort, { once: true });
      });
    },
    connect(credential) {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", `Bearer ${credential}`);
      return client.connect(metadata);
    },
    ready(timeoutMs) {
      return channelReady(client.getChannel(), timeoutMs);
    },
    close() {
      client.close();
    },
  };
}
