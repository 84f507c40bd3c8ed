// One structured log line per RPC on the API plane: debug when it succeeds
// or the client cancels, warn when it fails. A streaming RPC is logged when
// its response stream ends, so the line carries the final code.

import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { rpcErrorFields } from "../grpc/rpc-error-fields.ts";
import type { Logger } from "../logger.ts";

export function rpcLoggingInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const fields = {
      procedure: `/${req.service.typeName}/${req.method.name}`,
      protocol: protocolOf(req.header.get("content-type")),
    };
    const log = (error: unknown) => {
      const durationMs = Math.round(performance.now() - started);
      if (error === undefined) {
        logger.debug({ ...fields, code: "ok", durationMs }, "rpc");
        return;
      }
      const connectError = ConnectError.from(error);
      const line = { ...fields, code: Code[connectError.code], durationMs, ...rpcErrorFields(connectError) };
      if (connectError.code === Code.Canceled) logger.debug(line, "rpc cancelled");
      else logger.warn(line, "rpc failed");
    };

    let res;
    try {
      res = await next(req);
    } catch (error) {
      log(error);
      throw error;
    }
    if (!res.stream) {
      log(undefined);
      return res;
    }
    const messages = res.message;
    return {
      ...res,
      message: (async function* () {
        // Stays Canceled if the consumer stops early (the client went away).
        let outcome: unknown = new ConnectError("response stream abandoned", Code.Canceled);
        try {
          yield* messages;
          outcome = undefined;
        } catch (error) {
          outcome = error;
          throw error;
        } finally {
          log(outcome);
        }
      })(),
    };
  };
}

function protocolOf(contentType: string | null): string {
  if (contentType?.startsWith("application/grpc-web")) return "grpc-web";
  if (contentType?.startsWith("application/grpc")) return "grpc";
  return "connect";
}
