// Request validation shared by the API handlers: INVALID_ARGUMENT for what is
// malformed, NOT_FOUND for ids that resolve to nothing.

import { Code, ConnectError } from "@connectrpc/connect";
import { DEFAULT_SPACE } from "../domain.ts";

const SPACE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const POOL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

export function notFound(what: string, id: string): ConnectError {
  return new ConnectError(`${what} ${id} not found`, Code.NotFound);
}

export function space(value: string): string {
  if (value === "") return DEFAULT_SPACE;
  if (!SPACE.test(value)) throw invalid(`space "${value.slice(0, 64)}" must be 1 to 63 lower-case letters, digits or '-'`);
  return value;
}

/** A required id: empty is INVALID_ARGUMENT; returns null when it cannot exist (then the caller answers NOT_FOUND). */
export function id(value: string, field: string): string | null {
  if (value === "") throw invalid(`${field} is required`);
  return UUID.test(value) ? value.toLowerCase() : null;
}

export function poolName(value: string): string {
  const name = value.trim();
  if (name === "") throw invalid("name is required");
  if (!POOL_NAME.test(name)) throw invalid(`name "${name.slice(0, 64)}" must be 1 to 64 letters, digits, '_', '.' or '-'`);
  return name;
}

export function description(value: string): string {
  if (value.length > 1024) throw invalid("description is longer than 1024 characters");
  return value;
}
