// The AgentService implementation on the agent plane's grpc-js server:
// Register exchanges a registration token for a worker credential; Connect
// authenticates the credential and hands the stream to an agent session.
//
// The service may be created before the stores are open (`deps` a promise):
// the server then listens for agents from its first instant, so agents that
// lost it come back as soon as the process is up, and their calls wait here,
// stream open and Hello unread, until the stores are ready. If start-up
// fails instead, the waiting calls end with UNAVAILABLE.

import { create } from "@bufbuild/protobuf";
import { status, type sendUnaryData, type ServerDuplexStream, type ServerUnaryCall, type UntypedServiceImplementation } from "@grpc/grpc-js";
import {
  RegisterResponseSchema,
  type ConnectRequest,
  type ConnectResponse,
  type RegisterRequest,
  type RegisterResponse,
} from "../../gen/muster/v1/agent_pb.js";
import { bearer, hashSecret, newSecret } from "../auth/secrets.ts";
import { isMalformed } from "../grpc/grpcjs-service.ts";
import { runAgentSession, type SessionDeps } from "./agent-session.ts";
import { validateWorkerAttributes } from "./worker-attributes.ts";

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
/**
 * Concurrent Connect streams one worker credential may hold on this replica.
 * An agent holds one; a reconnect briefly overlaps the stream it replaces.
 * More is a misconfigured fleet (one credential copied to many hosts) or abuse.
 */
const MAX_STREAMS_PER_WORKER = 4;

export function createAgentService(source: SessionDeps | Promise<SessionDeps>): UntypedServiceImplementation {
  /** Set once the stores are ready; until then calls wait on `ready`. */
  let deps: SessionDeps | null = source instanceof Promise ? null : source;
  const ready = Promise.resolve(source).then((resolved) => (deps = resolved));
  ready.catch(() => {});
  /** Open Connect streams per worker id on this replica; owned here. */
  const streams = new Map<string, number>();

  /** Counts the stream against its worker until it ends; false if the worker is at the cap. */
  function admit(workerId: string, call: ServerDuplexStream<ConnectRequest, ConnectResponse>): boolean {
    const open = streams.get(workerId) ?? 0;
    if (open >= MAX_STREAMS_PER_WORKER) return false;
    streams.set(workerId, open + 1);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const left = (streams.get(workerId) ?? 1) - 1;
      if (left <= 0) streams.delete(workerId);
      else streams.set(workerId, left);
    };
    for (const event of ["close", "cancelled", "error", "finish"]) call.once(event, release);
    return true;
  }

  async function register({ db, logger }: SessionDeps, request: RegisterRequest): Promise<RegisterResponse> {
    if (request.registrationToken === "") {
      throw { code: status.UNAUTHENTICATED, details: "registration_token is required" };
    }
    const name = request.name.trim();
    if (!NAME.test(name)) {
      throw { code: status.INVALID_ARGUMENT, details: "name must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit" };
    }
    const attributes = validateWorkerAttributes({ labels: request.labels, capacity: request.capacity });
    if (typeof attributes === "string") throw { code: status.INVALID_ARGUMENT, details: attributes };
    const token = await db.tokens.use(hashSecret(request.registrationToken), new Date());
    if (token === null) {
      throw { code: status.UNAUTHENTICATED, details: "registration token is unknown, expired or revoked" };
    }
    const pool = await db.pools.get(token.poolId);
    if (pool === null) throw { code: status.UNAUTHENTICATED, details: "the token's worker pool was deleted" };
    const credential = newSecret("worker");
    const worker = await db.workers.create({
      space: pool.space,
      poolId: pool.id,
      name,
      labels: attributes.labels,
      capacity: attributes.capacity,
      credentialHash: credential.hash,
      hostname: request.hostname.slice(0, 255),
      agentVersion: request.agentVersion.slice(0, 64),
    });
    logger.info(
      { event: "worker_registered", workerId: worker.id, name, pool: pool.name, poolId: pool.id, tokenId: token.id },
      "worker registered",
    );
    return create(RegisterResponseSchema, { workerId: worker.id, credential: credential.secret, workerPoolId: pool.id, space: pool.space });
  }

  /** Checks the stream's credential and hands it to a session. */
  function authenticate(call: ServerDuplexStream<ConnectRequest, ConnectResponse>, credential: string, current: SessionDeps): void {
    const { db, logger } = current;
    db.workers.byCredentialHash(hashSecret(credential)).then(
      (worker) => {
        // The agent gave up while its credential was looked up: nothing to run.
        if (call.cancelled) return;
        if (worker === null) {
          logger.warn({ event: "connect_refused", reason: "unknown credential" }, "agent connect refused");
          call.emit("error", { code: status.UNAUTHENTICATED, details: "worker credential is unknown or revoked" });
          return;
        }
        if (!admit(worker.id, call)) {
          logger.warn({ event: "connect_refused", workerId: worker.id, reason: "too many streams" }, "agent connect refused");
          call.emit("error", { code: status.RESOURCE_EXHAUSTED, details: `at most ${MAX_STREAMS_PER_WORKER} streams per worker credential` });
          return;
        }
        runAgentSession(call, worker, current);
      },
      (error) => {
        logger.error({ event: "connect_failed", err: error }, "authenticating an agent failed");
        call.emit("error", { code: status.UNAVAILABLE, details: "the server cannot check credentials right now" });
      },
    );
  }

  return {
    register(call: ServerUnaryCall<RegisterRequest, RegisterResponse>, callback: sendUnaryData<RegisterResponse>) {
      if (isMalformed(call.request)) {
        callback({ code: status.INVALID_ARGUMENT, details: call.request.malformed });
        return;
      }
      ready.then(
        (current) =>
          register(current, call.request).then(
            (response) => callback(null, response),
            (error: { code?: number; details?: string; message?: string }) => {
              if (typeof error.code !== "number") {
                current.logger.error({ event: "register_failed", err: error }, "registering a worker failed");
                callback({ code: status.INTERNAL, details: "registration failed" });
              } else {
                current.logger.warn({ event: "register_refused", code: error.code, reason: error.details }, "registration refused");
                callback({ code: error.code, details: error.details ?? "" });
              }
            },
          ),
        () => callback({ code: status.UNAVAILABLE, details: "the server did not start" }),
      );
    },
    connect(call: ServerDuplexStream<ConnectRequest, ConnectResponse>) {
      const credential = bearer(call.metadata.get("authorization")[0]?.toString());
      if (credential === null) {
        call.emit("error", { code: status.UNAUTHENTICATED, details: "authorization metadata with a Bearer worker credential is required" });
        return;
      }
      if (deps !== null) {
        authenticate(call, credential, deps);
        return;
      }
      ready.then(
        (current) => {
          if (!call.cancelled) authenticate(call, credential, current);
        },
        () => {
          if (!call.cancelled) call.emit("error", { code: status.UNAVAILABLE, details: "the server did not start" });
        },
      );
    },
  };
}
