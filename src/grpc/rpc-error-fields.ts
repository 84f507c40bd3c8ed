// How a failed RPC appears in a log line, the same on both planes.

import { Code, type ConnectError } from "@connectrpc/connect";

/** Server faults carry their stack; errors a handler raised on purpose carry their message only. */
export function rpcErrorFields(error: ConnectError): Record<string, unknown> {
  const fault = error.code === Code.Internal || error.code === Code.Unknown || error.code === Code.DataLoss;
  return fault ? { err: error.cause instanceof Error ? error.cause : error } : { error: error.rawMessage };
}
