// Store and scheduler errors to Connect errors, mapped once at the boundary.
// Anything unexpected is logged and answered as INTERNAL without details.

import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../logger.ts";
import { AlreadyExistsError, PreconditionError } from "../stores/database.ts";
import { NotFoundError } from "../scheduler/job-placer.ts";

/** Errors that mean a store could not be reached, not that the request was wrong. */
const UNREACHABLE_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "57P01", "57P03", "08006", "08001", "08003"]);

function isUnreachable(error: unknown): boolean {
  for (let cause = error; cause instanceof Error; cause = cause.cause) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && UNREACHABLE_CODES.has(code)) return true;
    if (/Connection terminated|connect ECONNREFUSED|Connection is closed|timeout exceeded when trying to connect/i.test(cause.message)) return true;
  }
  return false;
}

export function toConnectError(error: unknown, logger: Logger, method: string): ConnectError {
  if (error instanceof ConnectError) return error;
  if (isUnreachable(error)) {
    logger.warn({ event: "rpc_store_unavailable", method, err: error }, "a store is unreachable");
    return new ConnectError("a backing store is unreachable; retry later", Code.Unavailable);
  }
  if (error instanceof AlreadyExistsError) return new ConnectError(error.message, Code.AlreadyExists);
  if (error instanceof PreconditionError) return new ConnectError(error.message, Code.FailedPrecondition);
  if (error instanceof NotFoundError) return new ConnectError(error.message, Code.NotFound);
  logger.error({ event: "rpc_failed", method, err: error }, "request failed");
  return new ConnectError("internal error", Code.Internal);
}

/** Wraps every method of a service implementation so errors are mapped once. */
export function mapErrors<T extends Record<string, (...args: never[]) => unknown>>(impl: T, logger: Logger): T {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(impl)) {
    const method = fn as (...args: unknown[]) => unknown;
    if (method.constructor.name === "AsyncGeneratorFunction") {
      wrapped[name] = async function* (...args: unknown[]) {
        try {
          yield* method(...args) as AsyncGenerator<unknown>;
        } catch (error) {
          throw toConnectError(error, logger, name);
        }
      };
    } else {
      wrapped[name] = async (...args: unknown[]) => {
        try {
          return await method(...args);
        } catch (error) {
          throw toConnectError(error, logger, name);
        }
      };
    }
  }
  return wrapped as T;
}
