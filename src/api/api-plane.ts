// The API plane: one plaintext port serving the routed services as gRPC,
// gRPC-Web and Connect (connect-node), with grpc.health.v1.Health, server
// reflection (v1 and v1alpha) and GET /healthz, /readyz, /metrics beside them.
// HTTP/2 (gRPC clients, prior knowledge) and HTTP/1.1 (curl, probes,
// Prometheus) share the port through the preface listener. Plain unary gRPC
// calls take a shorter path to the same implementations (grpc-unary.ts).
//
// Lifecycle: 'idle' -> 'starting' -> 'running' -> 'closing' -> 'closed'.
// close() stops accepting, aborts every handler's signal (response streams
// then end with UNAVAILABLE), sends GOAWAY to HTTP/2 sessions, closes idle
// HTTP/1.1 connections, destroys whatever is still open after CLOSE_GRACE_MS,
// and resolves once every socket is gone.

import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import http from "node:http";
import http2 from "node:http2";
import type net from "node:net";
import type { Registry } from "prom-client";
import { Health } from "../../gen/health/v1/health_pb.js";
import { healthService, type HealthStatus } from "../grpc/health-service.ts";
import {
  createReflectionIndex,
  reflectionServiceV1,
  reflectionServiceV1Alpha,
  ServerReflectionV1,
  ServerReflectionV1Alpha,
} from "../grpc/reflection-service.ts";
import type { Logger } from "../logger.ts";
import { API_COMPRESSION } from "./compression.ts";
import { installGrpcUnaryPath, recordingRouter, type UnaryMethods } from "./grpc-unary.ts";
import { httpEndpoints, type Readiness } from "./http-endpoints.ts";
import { createPrefaceListener } from "./preface-listener.ts";
import { rpcLoggingInterceptor } from "./rpc-logging.ts";

/** Largest request message accepted (connect-node answers RESOURCE_EXHAUSTED above it). */
const READ_MAX_BYTES = 4 * 1024 * 1024;
/** Responses from this size on are compressed when the client accepts it (connect-node's default). */
const COMPRESS_MIN_BYTES = 1024;
/** A connection must send its first bytes (HTTP/2 preface or an HTTP/1.1 request line) within this. */
const PREFACE_TIMEOUT_MS = 10_000;
/** HTTP/1.1: time to receive a request's headers, and its whole body. */
const HTTP1_HEADERS_TIMEOUT_MS = 10_000;
const HTTP1_REQUEST_TIMEOUT_MS = 60_000;
/** HTTP/1.1: an idle keep-alive connection is closed after this. */
const HTTP1_KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** HTTP/2: concurrent streams per connection (each WatchJob / GetJobLogs follower holds one). */
const HTTP2_MAX_CONCURRENT_STREAMS = 1_000;
/** HTTP/2: largest header block accepted, as gRPC's default metadata limit. */
const HTTP2_MAX_HEADER_LIST_SIZE = 16 * 1024;
/** HTTP/2: per-session memory cap in MB before new streams are refused. */
const HTTP2_MAX_SESSION_MEMORY_MB = 32;
/** /readyz answers 503 if the readiness check takes longer. */
const READINESS_TIMEOUT_MS = 2_000;
/** On close, connections still open after this are destroyed. */
const CLOSE_GRACE_MS = 5_000;

export type ApiPlaneState = "idle" | "starting" | "running" | "closing" | "closed";

export interface ApiPlaneOptions {
  host: string;
  port: number;
  logger: Logger;
  /** Registers the Muster services. Health and reflection are added by the plane. */
  routes: (router: ConnectRouter) => void;
  /**
   * Extra services reflection should describe. Services registered in
   * `routes` are found from the router; there is no need to repeat them.
   */
  services?: DescService[];
  health: HealthStatus;
  readiness: () => Promise<Readiness>;
  metrics: Registry;
}

export interface ApiPlane {
  readonly state: ApiPlaneState;
  /** Listens; resolves with the bound address (port 0 picks a free port). */
  start(): Promise<{ host: string; port: number }>;
  close(): Promise<void>;
}

export function createApiPlane(options: ApiPlaneOptions): ApiPlane {
  const { logger } = options;
  let state: ApiPlaneState = "idle";
  let closing: Promise<void> | undefined;
  const shutdown = new AbortController();

  const interceptors = [rpcLoggingInterceptor(logger), endStreamsOnShutdown(shutdown.signal)];
  const unaryMethods: UnaryMethods = new Map();
  const handler = connectNodeAdapter({
    routes: (connectRouter) => {
      const router = recordingRouter(connectRouter, unaryMethods);
      options.routes(router);
      router.service(Health, healthService(options.health));
      const routed = router.handlers.map((h) => h.service);
      const index = createReflectionIndex(
        unique([...routed, ...(options.services ?? []), ServerReflectionV1, ServerReflectionV1Alpha]),
      );
      router.service(ServerReflectionV1, reflectionServiceV1(index));
      router.service(ServerReflectionV1Alpha, reflectionServiceV1Alpha(index));
    },
    readMaxBytes: READ_MAX_BYTES,
    acceptCompression: API_COMPRESSION,
    compressMinBytes: COMPRESS_MIN_BYTES,
    shutdownSignal: shutdown.signal,
    interceptors,
    fallback: httpEndpoints({
      logger,
      metrics: options.metrics,
      readiness: options.readiness,
      readinessTimeoutMs: READINESS_TIMEOUT_MS,
    }),
  });

  // Ownership of connections: every accepted socket is in `sockets` until it
  // closes; the inner servers only ever see sockets handed to them.
  const sockets = new Set<net.Socket>();
  const routed = new WeakSet<net.Socket>();
  const sessions = new Set<http2.ServerHttp2Session>();
  const onRouted = (socket: net.Socket) => routed.add(socket);

  const http1Server = http.createServer(
    {
      headersTimeout: HTTP1_HEADERS_TIMEOUT_MS,
      requestTimeout: HTTP1_REQUEST_TIMEOUT_MS,
      keepAliveTimeout: HTTP1_KEEP_ALIVE_TIMEOUT_MS,
    },
    (req, res) => {
      // While closing, a finished response leaves an idle keep-alive
      // connection behind; close it instead of waiting for the grace timer.
      res.once("close", () => {
        if (state === "closing") setImmediate(() => http1Server.closeIdleConnections());
      });
      handler(req, res);
    },
  );
  http1Server.on("connection", onRouted);

  const http2Server = http2.createServer(
    {
      settings: {
        maxConcurrentStreams: HTTP2_MAX_CONCURRENT_STREAMS,
        maxHeaderListSize: HTTP2_MAX_HEADER_LIST_SIZE,
      },
      maxSessionMemory: HTTP2_MAX_SESSION_MEMORY_MB,
    },
    handler,
  );
  const unaryPath = installGrpcUnaryPath(http2Server, unaryMethods, {
    readMaxBytes: READ_MAX_BYTES,
    compressMinBytes: COMPRESS_MIN_BYTES,
    interceptors,
    shutdownSignal: shutdown.signal,
  });
  if (!unaryPath) logger.warn({ event: "grpc_unary_path_off" }, "unary gRPC calls go through connect-node: the HTTP/2 server has no compatibility listener to put the short path in front of");
  http2Server.on("connection", onRouted);
  http2Server.on("session", (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    if (state === "closing") session.close();
  });
  http2Server.on("sessionError", (error: Error) => logger.warn({ err: error }, "http2 session error"));

  const listener = createPrefaceListener({
    http1: http1Server,
    http2: http2Server,
    prefaceTimeoutMs: PREFACE_TIMEOUT_MS,
    onSocket(socket) {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
    },
  });

  let starting: Promise<void> | undefined;

  async function start(): Promise<{ host: string; port: number }> {
    if (state !== "idle") throw new Error(`api plane cannot start: it is ${state}`);
    state = "starting";
    starting = new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.listen({ host: options.host, port: options.port }, () => {
        listener.removeListener("error", reject);
        resolve();
      });
    });
    try {
      await starting;
    } catch (error) {
      state = "closed";
      throw error;
    }
    if (state !== "starting") {
      // close() was called while listening began; it owns the shutdown.
      throw new Error("api plane was closed while starting");
    }
    listener.on("error", (error) => logger.warn({ err: error }, "api listener error"));
    // http.Server enforces headersTimeout/requestTimeout from a checker it
    // starts on 'listening'; it never listens itself here, so tell it.
    http1Server.emit("listening");
    state = "running";
    const address = listener.address() as net.AddressInfo;
    logger.info({ event: "api_plane_listening", host: address.address, port: address.port }, "API plane listening");
    return { host: address.address, port: address.port };
  }

  async function shutDown(): Promise<void> {
    if (state === "starting") state = "closing";
    await starting?.catch(() => undefined);
    const wasListening = listener.listening;
    state = "closing";
    const closed = new Promise<void>((resolve) => {
      if (wasListening) listener.close(() => resolve());
      else resolve();
    });
    shutdown.abort(new ConnectError("server is shutting down", Code.Unavailable));
    // Sockets still waiting to show their protocol belong to no server yet.
    for (const socket of sockets) if (!routed.has(socket)) socket.destroy();
    for (const session of sessions) session.close();
    // Clears the timeout checker and closes idle connections; the callback
    // reports ERR_SERVER_NOT_RUNNING because it never listened, which is fine.
    http1Server.close(() => undefined);
    const grace = setTimeout(() => {
      for (const socket of sockets) socket.destroy();
    }, CLOSE_GRACE_MS);
    grace.unref();
    await closed;
    clearTimeout(grace);
    state = "closed";
    logger.info({ event: "api_plane_closed" }, "API plane closed");
  }

  return {
    get state() {
      return state;
    },
    start,
    close() {
      closing ??= shutDown();
      return closing;
    },
  };
}

/**
 * A response stream that ends because the server is shutting down ends with
 * the shutdown error (UNAVAILABLE), not OK: a WatchJob client must not take
 * it for the end of the job, and every gRPC client retries UNAVAILABLE.
 */
function endStreamsOnShutdown(shutdownSignal: AbortSignal): Interceptor {
  return (next) => async (req) => {
    const res = await next(req);
    if (!res.stream) return res;
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        yield* messages;
        if (shutdownSignal.aborted) throw ConnectError.from(shutdownSignal.reason, Code.Unavailable);
      })(),
    };
  };
}

function unique(services: DescService[]): DescService[] {
  return [...new Map(services.map((service) => [service.typeName, service])).values()];
}
