// The agent plane: a @grpc/grpc-js server for AgentService, with
// grpc.health.v1.Health and server reflection (v1, v1alpha) served through
// the connect-es adapter. grpc-js owns keepalive pings, connection ageing
// and message size limits; the tunables are below. HTTP/2 flow-control
// windows are wider than the defaults (http2-windows.ts).
//
// The listening socket is the plane's own (a net.Server whose connections
// are handed to grpc-js through its connection injector), for its accept
// backlog: after a restart a whole fleet connects within a few hundred
// milliseconds, while the event loop may still be busy starting the rest of
// the server, and grpc-js listens with Node's default backlog of 511. A
// connection beyond the backlog is dropped by the kernel, not refused, and
// its agent waits a TCP retransmission (one second, then three) before it
// can even try again.
//
// Lifecycle: 'idle' -> 'starting' -> 'running' -> 'draining' -> 'closed'.
// drain(graceMs) stops accepting connections, ends health watches, sends
// GOAWAY to every connection and waits up to graceMs for their calls to end
// before cutting them; close() cuts whatever is left and resolves when the
// listening socket and every connection are gone.

import net from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { AgentService } from "../../gen/muster/v1/agent_pb.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { addConnectService } from "../grpc/grpcjs-adapter.ts";
import { healthService, type HealthStatus } from "../grpc/health-service.ts";
import {
  createReflectionIndex,
  reflectionServiceV1,
  reflectionServiceV1Alpha,
  ServerReflectionV1,
  ServerReflectionV1Alpha,
} from "../grpc/reflection-service.ts";
import type { Logger } from "../logger.ts";
import { widenConnectionWindows, widenStreamWindow } from "./http2-windows.ts";

/** The server pings each connection after this long without activity, to find dead agents behind NATs. */
const KEEPALIVE_TIME_MS = 30_000;
/** A ping not acknowledged within this closes the connection. */
const KEEPALIVE_TIMEOUT_MS = 10_000;
/**
 * Client-ping enforcement as gRPC core and grpc-go define it (permit pings
 * without calls, min interval, strikes before GOAWAY ENHANCE_YOUR_CALM).
 * grpc-js 1.14 does not implement it (grpc/grpc-node#1699: Node's http2
 * answers pings itself; nghttp2 only caps unacknowledged outbound frames),
 * so these are passed for when it does and to document what agents may
 * assume: a ping every 10 s is always allowed, idle or not.
 */
const KEEPALIVE_PERMIT_WITHOUT_CALLS = true;
const HTTP2_MIN_PING_INTERVAL_WITHOUT_DATA_MS = 10_000;
const HTTP2_MAX_PING_STRIKES = 2;
/**
 * Connections are recycled (GOAWAY) after about this long (grpc-js adds
 * ±10 % jitter) so that agents spread over replicas again after a rollout;
 * an agent's stream then has the grace period before it is cut, and the
 * agent reconnects and resumes its session.
 */
const MAX_CONNECTION_AGE_MS = 60 * 60_000;
const MAX_CONNECTION_AGE_GRACE_MS = 30_000;
/** Largest message accepted from an agent; log chunks are bounded below this by config. */
const MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;
/**
 * Connections the kernel queues for the plane before it accepts them (the
 * kernel caps it at net.core.somaxconn): a fleet of agents reconnecting at
 * once after a restart.
 */
const LISTEN_BACKLOG = 4096;
/** An agent holds one Connect stream and makes the odd Register call. */
const MAX_CONCURRENT_STREAMS = 100;

export type AgentPlaneState = "idle" | "starting" | "running" | "draining" | "closed";

export interface AgentPlaneOptions {
  host: string;
  port: number;
  logger: Logger;
  health: HealthStatus;
  keepalive?: {
    timeMs?: number;
    timeoutMs?: number;
    permitWithoutCalls?: boolean;
    minPingIntervalWithoutDataMs?: number;
    maxPingStrikes?: number;
  };
  maxConnectionAgeMs?: number;
  maxConnectionAgeGraceMs?: number;
  maxReceiveMessageBytes?: number;
  /** Descriptors of the services added with addService, for reflection. Default: [AgentService]. */
  services?: DescService[];
}

export interface AgentPlaneServer {
  readonly server: grpc.Server;
  readonly state: AgentPlaneState;
  /** Adds a native grpc-js service, e.g. addService(grpcJsServiceDefinition(AgentService), impl). */
  addService(definition: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void;
  start(): Promise<{ host: string; port: number }>;
  drain(graceMs: number): Promise<void>;
  close(): Promise<void>;
}

/** The grpc-js channel options for the agent plane, from the options and the defaults above. */
export function agentPlaneChannelOptions(options: AgentPlaneOptions): grpc.ServerOptions {
  const keepalive = options.keepalive ?? {};
  return {
    "grpc.keepalive_time_ms": keepalive.timeMs ?? KEEPALIVE_TIME_MS,
    "grpc.keepalive_timeout_ms": keepalive.timeoutMs ?? KEEPALIVE_TIMEOUT_MS,
    "grpc.keepalive_permit_without_calls": (keepalive.permitWithoutCalls ?? KEEPALIVE_PERMIT_WITHOUT_CALLS) ? 1 : 0,
    "grpc.http2.min_ping_interval_without_data_ms":
      keepalive.minPingIntervalWithoutDataMs ?? HTTP2_MIN_PING_INTERVAL_WITHOUT_DATA_MS,
    "grpc.http2.max_ping_strikes": keepalive.maxPingStrikes ?? HTTP2_MAX_PING_STRIKES,
    "grpc.max_connection_age_ms": options.maxConnectionAgeMs ?? MAX_CONNECTION_AGE_MS,
    "grpc.max_connection_age_grace_ms": options.maxConnectionAgeGraceMs ?? MAX_CONNECTION_AGE_GRACE_MS,
    "grpc.max_receive_message_length": options.maxReceiveMessageBytes ?? MAX_RECEIVE_MESSAGE_BYTES,
    "grpc.max_concurrent_streams": MAX_CONCURRENT_STREAMS,
  };
}

export function createAgentPlaneServer(options: AgentPlaneOptions): AgentPlaneServer {
  const { logger } = options;
  const server = new grpc.Server(agentPlaneChannelOptions(options));
  widenStreamWindow(server, logger);
  // Ends health watches (and any other adapter-served stream) on drain.
  const shutdown = new AbortController();
  const adapterOptions = { shutdownSignal: shutdown.signal, logger };
  let state: AgentPlaneState = "idle";
  let draining: Promise<void> | undefined;
  let closing: Promise<void> | undefined;

  addConnectService(server, Health, healthService(options.health), adapterOptions);
  const index = createReflectionIndex([
    ...(options.services ?? [AgentService]),
    Health,
    ServerReflectionV1,
    ServerReflectionV1Alpha,
  ]);
  addConnectService(server, ServerReflectionV1, reflectionServiceV1(index), adapterOptions);
  addConnectService(server, ServerReflectionV1Alpha, reflectionServiceV1Alpha(index), adapterOptions);

  /** The plane's own listening socket and the connections it accepted; null while grpc-js listens itself. */
  let listener: { server: net.Server; sockets: Set<net.Socket> } | null = null;

  /** Listens on an IP address with LISTEN_BACKLOG; a host name is left to grpc-js, which binds each of its addresses. */
  async function listen(): Promise<number> {
    if (net.isIP(options.host) === 0) {
      return new Promise<number>((resolve, reject) => {
        server.bindAsync(`${options.host}:${options.port}`, grpc.ServerCredentials.createInsecure(), (error, bound) =>
          error ? reject(error) : resolve(bound),
        );
      });
    }
    const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const sockets = new Set<net.Socket>();
    const socketServer = net.createServer((socket) => {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      injector.injectConnection(socket);
    });
    listener = { server: socketServer, sockets };
    await new Promise<void>((resolve, reject) => {
      socketServer.once("error", reject);
      socketServer.listen({ host: options.host, port: options.port, backlog: LISTEN_BACKLOG }, () => {
        socketServer.removeListener("error", reject);
        resolve();
      });
    });
    socketServer.on("error", (error) => logger.warn({ event: "agent_plane_listener_error", err: error }, "agent plane listener error"));
    return (socketServer.address() as net.AddressInfo).port;
  }

  /** Stops accepting connections; with `cut`, also destroys those accepted. */
  function stopListening(cut: boolean): void {
    if (listener === null) return;
    if (listener.server.listening) listener.server.close();
    if (cut) for (const socket of listener.sockets) socket.destroy();
  }

  async function start(): Promise<{ host: string; port: number }> {
    if (state !== "idle") throw new Error(`agent plane cannot start: it is ${state}`);
    state = "starting";
    try {
      const port = await listen();
      widenConnectionWindows(server, logger);
      state = "running";
      logger.info({ event: "agent_plane_listening", host: options.host, port }, "agent plane listening");
      return { host: options.host, port };
    } catch (error) {
      state = "closed";
      stopListening(true);
      server.forceShutdown();
      throw error;
    }
  }

  function drain(graceMs: number): Promise<void> {
    draining ??= (async () => {
      if (state !== "running") return;
      state = "draining";
      stopListening(false);
      shutdown.abort(new ConnectError("server is shutting down", Code.Unavailable));
      // tryShutdown stops accepting and sends GOAWAY; it calls back once
      // every connection has closed, which the grace timer bounds.
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          logger.info({ event: "agent_plane_drain_timeout", graceMs }, "cutting agent connections still open");
          server.forceShutdown();
          stopListening(true);
          resolve();
        }, graceMs);
        timer.unref();
        server.tryShutdown(() => resolve());
      });
      clearTimeout(timer);
    })();
    return draining;
  }

  function close(): Promise<void> {
    closing ??= (async () => {
      if (state === "running" || state === "draining") {
        shutdown.abort(new ConnectError("server is shutting down", Code.Unavailable));
        server.forceShutdown();
        stopListening(true);
        await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      }
      state = "closed";
      logger.info({ event: "agent_plane_closed" }, "agent plane closed");
    })();
    return closing;
  }

  return {
    server,
    get state() {
      return state;
    },
    addService(definition, implementation) {
      server.addService(definition, implementation);
    },
    start,
    drain,
    close,
  };
}
