// Serves a connect-es ServiceImpl on a @grpc/grpc-js server, so services
// written once for connect-node (health, reflection) run on the agent plane
// too. Each call gets a connect HandlerContext whose signal fires when the
// client cancels, the deadline passes, the server shuts down (shutdownSignal)
// or the call ends. ConnectErrors become gRPC statuses with their metadata
// and details; server-stream writes wait for 'drain' when grpc-js asks.

import type { EventEmitter } from "node:events";
import { create, type DescMessage, type DescMethod, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createHandlerContext,
  createServiceImplSpec,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../logger.ts";
import { grpcJsServiceDefinition } from "./grpcjs-service.ts";
import { rpcErrorFields } from "./rpc-error-fields.ts";

export interface GrpcJsAdapterOptions {
  /** Aborting it aborts every running call's context signal (graceful shutdown). */
  shutdownSignal?: AbortSignal;
  /** One debug line per call; failures at warn. */
  logger?: Logger;
}

const GRPC_STATUS: Record<Code, grpc.status> = {
  [Code.Canceled]: grpc.status.CANCELLED,
  [Code.Unknown]: grpc.status.UNKNOWN,
  [Code.InvalidArgument]: grpc.status.INVALID_ARGUMENT,
  [Code.DeadlineExceeded]: grpc.status.DEADLINE_EXCEEDED,
  [Code.NotFound]: grpc.status.NOT_FOUND,
  [Code.AlreadyExists]: grpc.status.ALREADY_EXISTS,
  [Code.PermissionDenied]: grpc.status.PERMISSION_DENIED,
  [Code.ResourceExhausted]: grpc.status.RESOURCE_EXHAUSTED,
  [Code.FailedPrecondition]: grpc.status.FAILED_PRECONDITION,
  [Code.Aborted]: grpc.status.ABORTED,
  [Code.OutOfRange]: grpc.status.OUT_OF_RANGE,
  [Code.Unimplemented]: grpc.status.UNIMPLEMENTED,
  [Code.Internal]: grpc.status.INTERNAL,
  [Code.Unavailable]: grpc.status.UNAVAILABLE,
  [Code.DataLoss]: grpc.status.DATA_LOSS,
  [Code.Unauthenticated]: grpc.status.UNAUTHENTICATED,
};

/** Adds `service`, implemented connect-es style, to a grpc-js server. */
export function addConnectService<T extends DescService>(
  server: grpc.Server,
  service: T,
  implementation: Partial<ServiceImpl<T>>,
  options: GrpcJsAdapterOptions = {},
): void {
  server.addService(grpcJsServiceDefinition(service), grpcJsImplementation(service, implementation, options));
}

/** The grpc-js handlers for a connect-es ServiceImpl, keyed like grpcJsServiceDefinition(service). */
export function grpcJsImplementation<T extends DescService>(
  service: T,
  implementation: Partial<ServiceImpl<T>>,
  options: GrpcJsAdapterOptions = {},
): grpc.UntypedServiceImplementation {
  const spec = createServiceImplSpec(service, implementation);
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const methodSpec = spec.methods[method.localName];
    const call = callRunner(service, method, options);
    switch (methodSpec.kind) {
      case "unary":
        handlers[method.localName] = (c: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) =>
          call.unary(c, callback, (context) => methodSpec.impl(c.request as never, context));
        break;
      case "client_streaming":
        handlers[method.localName] = (c: grpc.ServerReadableStream<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) =>
          call.unary(c, callback, (context) => methodSpec.impl(readRequests(c, context.signal) as never, context));
        break;
      case "server_streaming":
        handlers[method.localName] = (c: grpc.ServerWritableStream<unknown, unknown>) =>
          call.stream(c, (context) => methodSpec.impl(c.request as never, context));
        break;
      case "bidi_streaming":
        handlers[method.localName] = (c: grpc.ServerDuplexStream<unknown, unknown>) =>
          call.stream(c, (context) => methodSpec.impl(readRequests(c, context.signal) as never, context));
        break;
    }
  }
  return handlers;
}

type AnyServerCall =
  | grpc.ServerUnaryCall<unknown, unknown>
  | grpc.ServerReadableStream<unknown, unknown>
  | grpc.ServerWritableStream<unknown, unknown>
  | grpc.ServerDuplexStream<unknown, unknown>;

type ResponseStream = grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

function callRunner(service: DescService, method: DescMethod, options: GrpcJsAdapterOptions) {
  const output: DescMessage = method.output;
  const procedure = `/${service.typeName}/${method.name}`;

  function begin(call: AnyServerCall) {
    const deadline = call.getDeadline();
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    // grpc-js ends a call whose deadline passed and reports it as cancelled;
    // the handler should see which of the two it was.
    const cancelled = new AbortController();
    const onCancel = () =>
      cancelled.abort(
        Date.now() >= deadlineMs
          ? new ConnectError("the deadline passed", Code.DeadlineExceeded)
          : new ConnectError("cancelled by the client", Code.Canceled),
      );
    const events: EventEmitter = call;
    events.on("cancelled", onCancel);
    if (call.cancelled) onCancel();
    const context = createHandlerContext({
      service,
      method,
      protocolName: "grpc",
      requestMethod: "POST",
      url: `http://${call.getHost()}${procedure}`,
      timeoutMs: Number.isFinite(deadlineMs) ? Math.max(0, deadlineMs - Date.now()) : undefined,
      requestSignal: cancelled.signal,
      shutdownSignal: options.shutdownSignal,
      requestHeader: metadataToHeaders(call.metadata),
    });
    const started = performance.now();
    let headerSent = false;
    return {
      context,
      sendHeader() {
        if (headerSent) return;
        headerSent = true;
        if (!isEmpty(context.responseHeader)) call.sendMetadata(headersToMetadata(context.responseHeader));
      },
      /** Ends the handler context (clearing its deadline timer) and logs the outcome. */
      finish(error: ConnectError | undefined) {
        events.removeListener("cancelled", onCancel);
        context.abort();
        const fields = { procedure, peer: call.getPeer(), durationMs: Math.round(performance.now() - started) };
        if (!error) options.logger?.debug({ ...fields, code: "ok" }, "rpc");
        else if (error.code === Code.Canceled) options.logger?.debug({ ...fields, code: Code[error.code] }, "rpc cancelled");
        else options.logger?.warn({ ...fields, code: Code[error.code], ...rpcErrorFields(error) }, "rpc failed");
      },
    };
  }

  function toStatus(reason: unknown, context: HandlerContext): Partial<grpc.StatusObject> {
    const error = ConnectError.from(reason);
    const metadata = headersToMetadata(context.responseTrailer);
    metadata.merge(headersToMetadata(error.metadata));
    const details = setTrailerStatus(new Headers(), error).get("grpc-status-details-bin");
    if (details) metadata.set("grpc-status-details-bin", Buffer.from(details, "base64"));
    return { code: GRPC_STATUS[error.code], details: error.rawMessage, metadata };
  }

  return {
    unary(
      call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown>,
      callback: grpc.sendUnaryData<unknown>,
      run: (context: HandlerContext) => unknown,
    ): void {
      const rpc = begin(call);
      const { context } = rpc;
      Promise.resolve()
        .then(() => run(context))
        .then((response) => create(output, response as never))
        .then(
          (message) => {
            rpc.finish(undefined);
            if (call.cancelled) return;
            rpc.sendHeader();
            callback(null, message, headersToMetadata(context.responseTrailer));
          },
          (reason: unknown) => {
            rpc.finish(ConnectError.from(reason));
            if (!call.cancelled) callback(toStatus(reason, context));
          },
        );
    },

    async stream(call: ResponseStream, run: (context: HandlerContext) => AsyncIterable<unknown>): Promise<void> {
      const rpc = begin(call);
      const { context } = rpc;
      try {
        for await (const response of run(context)) {
          if (call.cancelled) break;
          rpc.sendHeader();
          if (!call.write(create(output, response as never))) await drained(call, context.signal);
        }
        if (call.cancelled) throw new ConnectError("cancelled by the client", Code.Canceled);
        // A stream cut short by shutdown ends with UNAVAILABLE, not OK, so the client retries.
        if (options.shutdownSignal?.aborted) throw ConnectError.from(options.shutdownSignal.reason, Code.Unavailable);
        rpc.sendHeader();
        rpc.finish(undefined);
        call.end(headersToMetadata(context.responseTrailer));
      } catch (reason) {
        rpc.finish(ConnectError.from(reason));
        if (!call.cancelled) call.emit("error", toStatus(reason, context));
      }
    },
  };
}

/** The request stream as an AsyncIterable that ends with the call's signal, without destroying the call. */
async function* readRequests(
  call: grpc.ServerReadableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>,
  signal: AbortSignal,
): AsyncGenerator<unknown> {
  const iterator = call.iterator({ destroyOnReturn: false });
  const aborted = new Promise<never>((_, reject) => {
    const onAbort = () => reject(ConnectError.from(signal.reason, Code.Canceled));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  aborted.catch(() => undefined);
  for (;;) {
    const next = await Promise.race([iterator.next(), aborted]);
    if (next.done) return;
    yield next.value;
  }
}

function drained(call: ResponseStream, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.removeListener("drain", done);
      call.removeListener("close", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.once("drain", done);
    call.once("close", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

function isEmpty(headers: Headers): boolean {
  return headers.keys().next().done === true;
}

/** grpc-js metadata to fetch Headers; binary values stay base64, as connect expects for "-bin" keys. */
export function metadataToHeaders(metadata: grpc.Metadata): Headers {
  const headers = new Headers();
  for (const [key, values] of Object.entries(metadata.toHttp2Headers())) {
    for (const value of Array.isArray(values) ? values : [values]) {
      if (value !== undefined) headers.append(key, String(value));
    }
  }
  return headers;
}

export function headersToMetadata(headers: Headers): grpc.Metadata {
  const metadata = new grpc.Metadata();
  headers.forEach((value, key) => {
    if (key.endsWith("-bin")) {
      for (const part of value.split(",")) metadata.add(key, Buffer.from(part.trim(), "base64"));
    } else {
      metadata.add(key, value);
    }
  });
  return metadata;
}
