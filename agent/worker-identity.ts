// Who this worker is: the credential kept in the state file, or, on the very
// first start, the one Register returns for the registration token (which is
// then never needed again). Registration retries with backoff while the
// server is unreachable; a refused token ends the agent.

import { create } from "@bufbuild/protobuf";
import { status, type ServiceError } from "@grpc/grpc-js";
import { access, constants, mkdir } from "node:fs/promises";
import { RegisterRequestSchema } from "../gen/muster/v1/agent_pb.js";
import type { Logger } from "../src/logger.ts";
import type { AgentClient } from "./agent-client.ts";
import { AgentError, EXIT_CONFIG, EXIT_CREDENTIAL_REJECTED } from "./agent-error.ts";
import type { Backoff } from "./backoff.ts";
import type { AgentConfig } from "./config.ts";
import { readWorkerState, stateFilePath, StateFileError, writeWorkerState, type WorkerState } from "./state-file.ts";

export interface IdentityOptions {
  config: AgentConfig;
  client: AgentClient;
  logger: Logger;
  backoff: Backoff;
  /** Aborted when the agent stops: registration gives up and null is returned. */
  signal: AbortSignal;
  /** Waits between registration attempts; returns early once `signal` aborts. */
  pause: (ms: number) => Promise<void>;
}

function isServiceError(error: unknown): error is ServiceError {
  return typeof error === "object" && error !== null && typeof (error as ServiceError).code === "number";
}

/** Creates the state directory (0700) and checks it is writable, before anything is registered. */
export async function prepareStateDir(stateDir: string): Promise<void> {
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    await access(stateDir, constants.W_OK);
  } catch (error) {
    throw new AgentError(EXIT_CONFIG, `state directory ${stateDir} is unusable: ${(error as Error).message}`);
  }
}

/** The stored identity, or a new one from Register; null if the agent stopped first. Throws AgentError. */
export async function loadOrRegister(options: IdentityOptions): Promise<WorkerState | null> {
  const { config, client, logger, backoff, signal } = options;
  let stored: WorkerState | null;
  try {
    stored = await readWorkerState(config.stateDir);
  } catch (error) {
    if (error instanceof StateFileError) throw new AgentError(EXIT_CONFIG, error.message);
    throw error;
  }
  if (stored !== null) {
    if (stored.url !== config.url) {
      logger.warn({ event: "url_changed", storedUrl: stored.url, url: config.url }, "the stored credential was issued for another address; using it anyway");
    }
    if (config.token !== null) logger.info({ event: "token_ignored" }, "a worker credential is stored: the registration token is not used");
    logger.info({ event: "identity_loaded", workerId: stored.workerId }, "using the stored worker credential");
    return stored;
  }
  if (config.token === null) {
    throw new AgentError(EXIT_CONFIG, `no worker credential in ${stateFilePath(config.stateDir)} and no registration token: pass --token or MUSTER_TOKEN`);
  }
  const request = create(RegisterRequestSchema, {
    registrationToken: config.token,
    name: config.name,
    labels: config.labels,
    capacity: config.capacity,
    hostname: config.hostname,
    agentVersion: config.agentVersion,
  });
  while (!signal.aborted) {
    let response;
    try {
      response = await client.register(request, signal);
    } catch (error) {
      if (!isServiceError(error)) throw error;
      if (signal.aborted) return null;
      if (error.code === status.UNAUTHENTICATED) {
        throw new AgentError(EXIT_CREDENTIAL_REJECTED, `registration token rejected: ${error.details} (it is unknown, expired or revoked)`);
      }
      if (error.code === status.INVALID_ARGUMENT) throw new AgentError(EXIT_CONFIG, `registration refused: ${error.details}`);
      const retryInMs = backoff.next();
      logger.warn({ event: "register_failed", code: status[error.code], reason: error.details, retryInMs }, "registration failed; retrying");
      await options.pause(retryInMs);
      continue;
    }
    const registered: WorkerState = { workerId: response.workerId, credential: response.credential, url: config.url };
    try {
      await writeWorkerState(config.stateDir, registered);
    } catch (error) {
      throw new AgentError(EXIT_CONFIG, `registered as worker ${response.workerId} but could not keep its credential: ${(error as Error).message}`);
    }
    backoff.reset();
    logger.info(
      { event: "registered", workerId: response.workerId, name: config.name, poolId: response.workerPoolId, space: response.space },
      "registered; the registration token is no longer needed",
    );
    return registered;
  }
  return null;
}
