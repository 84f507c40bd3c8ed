// One Connect stream: Hello first, then wait for Welcome, then heartbeats
// every Welcome.heartbeat_interval and whatever the agent sends. The session
// owns the call and its timers; the agent owns everything that outlives a
// stream (attempts, outboxes) and decides what to do when `ended` resolves.
//
// Lifecycle: connecting (Hello sent, no Welcome yet) -> open (welcomed; send()
// works) -> closed. A stream that errors, ends, or brings no Welcome within
// WELCOME_TIMEOUT_MS closes; close() ends it from our side.

import { create } from "@bufbuild/protobuf";
import { durationMs, timestampNow } from "@bufbuild/protobuf/wkt";
import { status, type ServiceError, type StatusObject } from "@grpc/grpc-js";
import {
  ConnectRequestSchema,
  HeartbeatSchema,
  type ConnectRequest,
  type ConnectResponse,
  type Hello,
  type Welcome,
} from "../gen/muster/v1/agent_pb.js";
import type { Logger } from "../src/logger.ts";
import type { AgentClient, AgentStream } from "./agent-client.ts";

const WELCOME_TIMEOUT_MS = 15_000;
/** Used when the Welcome names no heartbeat interval. */
const DEFAULT_HEARTBEAT_MS = 5_000;
/** After close() half-closes the stream, how long the server gets to end it before we cancel. */
const CLOSE_TIMEOUT_MS = 1_000;

export type SessionState = "connecting" | "open" | "closed";

export interface SessionEnd {
  code: status;
  details: string;
  /** The stream got a Welcome before it ended. */
  welcomed: boolean;
}

export interface SessionOptions {
  client: AgentClient;
  credential: string;
  hello: Hello;
  logger: Logger;
  /** Read on every heartbeat. */
  draining: () => boolean;
  /** The session is open when this runs: send() works inside it. */
  onWelcome: (welcome: Welcome) => void;
  onMessage: (message: ConnectResponse["message"]) => void;
}

export interface Session {
  readonly id: string;
  readonly state: SessionState;
  start(): void;
  /** Sends when open; false otherwise (the caller keeps the message for the next session). */
  send(message: ConnectRequest["message"]): boolean;
  /** A heartbeat now (e.g. when draining starts), besides the regular ones. */
  heartbeat(): void;
  close(): void;
  readonly ended: Promise<SessionEnd>;
}

export function createSession(options: SessionOptions): Session {
  const { client, hello, logger, draining } = options;
  const id = hello.sessionId;
  let state: SessionState = "connecting";
  let call: AgentStream | null = null;
  let welcomed = false;
  /** close() half-closed the stream: nothing more may be written. */
  let ending = false;
  let heartbeatTimer: NodeJS.Timeout | null = null;
  let welcomeTimer: NodeJS.Timeout | null = null;
  let closeTimer: NodeJS.Timeout | null = null;
  let resolveEnded!: (end: SessionEnd) => void;
  const ended = new Promise<SessionEnd>((resolve) => {
    resolveEnded = resolve;
  });

  function write(message: ConnectRequest["message"]): boolean {
    if (call === null || state === "closed" || ending) return false;
    call.write(create(ConnectRequestSchema, { message }));
    return true;
  }

  function sendHeartbeat(): void {
    if (state === "open") write({ case: "heartbeat", value: create(HeartbeatSchema, { time: timestampNow(), draining: draining() }) });
  }

  function finish(code: status, details: string): void {
    if (state === "closed") return;
    state = "closed";
    for (const timer of [heartbeatTimer, welcomeTimer, closeTimer]) if (timer !== null) clearTimeout(timer);
    heartbeatTimer = welcomeTimer = closeTimer = null;
    if (call !== null) {
      call.removeAllListeners("data");
      // A late 'error' after we settled must not become an uncaught exception.
      call.on("error", () => {});
      call.cancel();
    }
    resolveEnded({ code, details, welcomed });
  }

  function onWelcome(welcome: Welcome): void {
    if (welcomeTimer !== null) clearTimeout(welcomeTimer);
    welcomeTimer = null;
    welcomed = true;
    state = "open";
    const intervalMs = welcome.heartbeatInterval ? durationMs(welcome.heartbeatInterval) : 0;
    heartbeatTimer = setInterval(sendHeartbeat, intervalMs > 0 ? intervalMs : DEFAULT_HEARTBEAT_MS);
    heartbeatTimer.unref();
    options.onWelcome(welcome);
  }

  return {
    id,
    get state() {
      return state;
    },
    ended,
    start() {
      if (call !== null) throw new Error("session already started");
      const stream = options.client.connect(options.credential);
      call = stream;
      stream.on("data", (response: ConnectResponse) => {
        if (state === "closed") return;
        const message = response.message;
        if (!welcomed) {
          if (message.case === "welcome") onWelcome(message.value);
          else logger.warn({ event: "protocol_error", got: message.case }, "message before Welcome ignored");
          return;
        }
        if (message.case === "welcome") {
          logger.warn({ event: "protocol_error", got: "welcome" }, "second Welcome ignored");
          return;
        }
        options.onMessage(message);
      });
      stream.on("error", (error: ServiceError) => finish(error.code ?? status.UNKNOWN, error.details ?? error.message));
      stream.on("status", (result: StatusObject) => finish(result.code, result.details || "stream ended"));
      stream.on("end", () => {
        // Without a status the server simply stopped; 'status' normally follows at once.
        closeTimer ??= setTimeout(() => finish(status.UNAVAILABLE, "server ended the stream"), CLOSE_TIMEOUT_MS);
        closeTimer.unref();
      });
      welcomeTimer = setTimeout(() => {
        logger.warn({ event: "welcome_timeout", timeoutMs: WELCOME_TIMEOUT_MS }, "no Welcome from the server");
        finish(status.DEADLINE_EXCEEDED, `no Welcome within ${WELCOME_TIMEOUT_MS} ms`);
      }, WELCOME_TIMEOUT_MS);
      welcomeTimer.unref();
      stream.write(create(ConnectRequestSchema, { message: { case: "hello", value: hello } }));
    },
    send(message) {
      return state === "open" && write(message);
    },
    heartbeat: sendHeartbeat,
    close() {
      if (state === "closed" || call === null) {
        finish(status.CANCELLED, "closed by the agent");
        return;
      }
      ending = true;
      call.end();
      closeTimer ??= setTimeout(() => finish(status.CANCELLED, "closed by the agent"), CLOSE_TIMEOUT_MS);
      closeTimer.unref();
    },
  };
}
