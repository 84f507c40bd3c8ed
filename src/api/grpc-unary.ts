// A short path for unary gRPC calls on the API plane's HTTP/2 server.
//
// connect-node serves every protocol through one pipeline of async iterables
// over Node's HTTP/2 compatibility layer. For the call the API plane takes
// most (SubmitJob, a few hundred bytes in and out) that pipeline costs about
// three times what the call's own work does: measured on this machine, a
// no-op unary call cost 334 µs of server CPU under connect-node and 113 µs
// under grpc-js, and connect's iterables were 45% of everything the server
// allocated while draining jobs.
//
// This path takes a request only when it is plain unary gRPC: POST, content
// type application/grpc or application/grpc+proto, a unary method that is
// registered, and no request compression. It reads the one length-prefixed
// message, runs the same implementation with the same interceptors through
// connect's own invokeUnaryImplementation (a HandlerContext exactly as
// connect builds it, deadline and shutdown signal included), and writes
// headers, the message and trailers on the stream itself. Errors become the
// same trailers connect writes (setTrailerStatus). Everything else (gRPC
// streaming calls, compressed requests, gRPC-Web, Connect, HTTP/1.1, paths
// it does not know) goes to connect-node unchanged.
//
// How it sits in front of connect-node: Node's HTTP/2 server implements its
// compatibility API ('request' events) as a listener of its own 'stream'
// event. installGrpcUnaryPath takes that listener out and puts one in front
// that calls it for every stream this path does not take. If the server does
// not look as expected (no such listener), nothing is installed and every
// call goes through connect-node as before.

import http2 from "node:http2";
import { fromBinary, toBinary, type DescMethodUnary, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createHandlerContext,
  createServiceImplSpec,
  type ConnectRouter,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
} from "@connectrpc/connect";
import { invokeUnaryImplementation } from "@connectrpc/connect/protocol";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { fastGzip } from "./compression.ts";

/** A unary method and its implementation, as createServiceImplSpec gives it. */
export interface UnarySpec {
  kind: "unary";
  method: DescMethodUnary;
  impl: (request: any, context: HandlerContext) => Promise<any>;
}

/** Unary methods by request path ("/muster.v1.JobService/SubmitJob"). */
export type UnaryMethods = Map<string, UnarySpec>;

export interface GrpcUnaryOptions {
  /** Same limit as connect-node's readMaxBytes: a larger request message gets RESOURCE_EXHAUSTED. */
  readMaxBytes: number;
  /** Responses at least this large are gzipped when the client accepts gzip (connect's default: 1 KiB). */
  compressMinBytes: number;
  interceptors: Interceptor[];
  shutdownSignal: AbortSignal;
}

/**
 * Collects the services a ConnectRouter is given, so the same implementations
 * can be served by the unary path. Returns a router to hand to the routes
 * callback in place of the real one; it registers everything on the real one.
 */
export function recordingRouter(router: ConnectRouter, registered: UnaryMethods): ConnectRouter {
  const recording: ConnectRouter = {
    get handlers() {
      return router.handlers;
    },
    service(service, implementation, options) {
      router.service(service, implementation, options);
      addUnaryMethods(service, implementation as Partial<ServiceImpl<DescService>>, registered);
      return recording;
    },
    rpc(method, impl, options) {
      router.rpc(method, impl, options);
      return recording;
    },
  };
  return recording;
}

function addUnaryMethods(service: DescService, implementation: Partial<ServiceImpl<DescService>>, registered: UnaryMethods): void {
  const spec = createServiceImplSpec(service, implementation);
  for (const method of service.methods) {
    const methodSpec = spec.methods[method.localName];
    if (methodSpec?.kind !== "unary") continue;
    registered.set(`/${service.typeName}/${method.name}`, methodSpec as unknown as UnarySpec);
  }
}

type StreamListener = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, flags: number, rawHeaders: string[]) => void;

/**
 * Puts the unary path in front of the server's compatibility listener.
 * Returns false (and changes nothing) if the server has no such listener.
 */
export function installGrpcUnaryPath(server: http2.Http2Server, methods: UnaryMethods, options: GrpcUnaryOptions): boolean {
  const listeners = server.listeners("stream") as StreamListener[];
  if (listeners.length !== 1) return false;
  const [compat] = listeners as [StreamListener];
  server.removeListener("stream", compat);
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, flags: number, rawHeaders: string[]) => {
    const spec = takes(headers) ? methods.get(headers[":path"]!) : undefined;
    if (spec === undefined) compat(stream, headers, flags, rawHeaders);
    else serveUnary(stream, headers, spec, options);
  });
  return true;
}

function takes(headers: http2.IncomingHttpHeaders): boolean {
  if (headers[":method"] !== "POST") return false;
  const type = headers["content-type"];
  if (type !== "application/grpc" && type !== "application/grpc+proto") return false;
  const encoding = headers["grpc-encoding"];
  return encoding === undefined || encoding === "identity";
}

/** A HandlerContext with the abort() connect's own handlers end a call with. */
type CallContext = ReturnType<typeof createHandlerContext>;

const HEADER_BYTES = 5;
const COMPRESSED_FLAG = 0b1;
/** The reason a finished call's context signal carries (connect aborts it without one, which builds a DOMException per call). */
const CALL_ENDED = new ConnectError("call ended", Code.Canceled);

function serveUnary(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, spec: UnarySpec, options: GrpcUnaryOptions): void {
  const chunks: Buffer[] = [];
  let received = 0;
  let declared = -1;
  let answered = false;
  let context: CallContext | undefined;

  stream.on("error", () => {
    // A reset stream; 'close' below cancels the call.
  });
  stream.once("close", () => {
    if (!answered) {
      answered = true;
      context?.abort(new ConnectError("the client cancelled the call", Code.Canceled));
    }
  });
  stream.on("data", (chunk: Buffer) => {
    if (answered) return;
    received += chunk.byteLength;
    chunks.push(chunk);
    if (declared < 0 && received >= HEADER_BYTES) {
      const head = chunks.length === 1 ? chunk : Buffer.concat(chunks);
      declared = head.readUInt32BE(1);
      if (declared > options.readMaxBytes) {
        fail(
          stream,
          new ConnectError(`message size ${declared} is larger than configured readMaxBytes ${options.readMaxBytes}`, Code.ResourceExhausted),
          undefined,
        );
        answered = true;
        chunks.length = 0;
      }
    }
  });
  stream.once("end", () => {
    if (answered) return;
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    let input: unknown;
    try {
      input = readMessage(body, spec.method);
    } catch (error) {
      answered = true;
      fail(stream, error as ConnectError, undefined);
      return;
    }
    const timeout = parseTimeout(single(headers["grpc-timeout"]), Number.MAX_SAFE_INTEGER);
    if (timeout.error !== undefined) {
      answered = true;
      fail(stream, timeout.error, undefined);
      return;
    }
    const authority = headers[":authority"] ?? headers.host ?? "localhost";
    context = createHandlerContext({
      ...spec,
      service: spec.method.parent,
      requestMethod: "POST",
      protocolName: "grpc",
      timeoutMs: timeout.timeoutMs,
      shutdownSignal: options.shutdownSignal,
      requestHeader: requestHeaders(headers),
      url: `http://${authority}${headers[":path"]}`,
      responseHeader: { "content-type": "application/grpc+proto" },
      responseTrailer: { "grpc-status": "0" },
    });
    const ctx = context;
    invokeUnaryImplementation(spec as never, ctx, input as never, options.interceptors).then(
      (output) => {
        if (answered) return;
        answered = true;
        let message: Uint8Array;
        try {
          message = toBinary(spec.method.output, output as never);
        } catch (error) {
          fail(stream, new ConnectError(`serialize binary: ${(error as Error).message}`, Code.Internal), ctx);
          return;
        }
        const gzip = acceptsGzip(headers) && message.byteLength >= options.compressMinBytes;
        respond(stream, message, ctx, gzip).then(
          () => ctx.abort(CALL_ENDED),
          (error: unknown) => {
            fail(stream, new ConnectError("compressing the response failed", Code.Internal, undefined, undefined, error), ctx);
            ctx.abort(CALL_ENDED);
          },
        );
      },
      (error: unknown) => {
        if (answered) return;
        answered = true;
        const connectError =
          error instanceof ConnectError ? error : new ConnectError("internal error", Code.Internal, undefined, undefined, error);
        fail(stream, connectError, ctx);
        ctx.abort(CALL_ENDED);
      },
    );
  });
}

/** The one message of a unary request body, or the ConnectError connect would raise. */
function readMessage(body: Buffer, method: DescMethodUnary): unknown {
  if (body.byteLength === 0) {
    throw new ConnectError("protocol error: missing input message for unary method", Code.Unimplemented);
  }
  if (body.byteLength < HEADER_BYTES) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  const flags = body[0]!;
  const length = body.readUInt32BE(1);
  if (body.byteLength < HEADER_BYTES + length) {
    throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  }
  if (body.byteLength > HEADER_BYTES + length) {
    throw new ConnectError("protocol error: received extra input message for unary method", Code.Unimplemented);
  }
  if ((flags & COMPRESSED_FLAG) === COMPRESSED_FLAG) {
    throw new ConnectError("received compressed envelope, but do not know how to decompress", Code.Internal);
  }
  try {
    return fromBinary(method.input, body.subarray(HEADER_BYTES));
  } catch (error) {
    throw new ConnectError(`parse binary: ${(error as Error).message}`, Code.Internal);
  }
}

/** The response as the API plane compresses it elsewhere (compression.ts: gzip level 1, large ones off the event loop). */
async function respond(stream: http2.ServerHttp2Stream, message: Uint8Array, context: HandlerContext, gzip: boolean): Promise<void> {
  const payload = gzip ? await fastGzip.compress(message) : message;
  if (stream.destroyed || stream.headersSent) return;
  const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.byteLength);
  frame[0] = gzip ? COMPRESSED_FLAG : 0;
  frame.writeUInt32BE(payload.byteLength, 1);
  frame.set(payload, HEADER_BYTES);
  const head = headerObject(context.responseHeader, { ":status": 200 });
  if (gzip) head["grpc-encoding"] = "gzip";
  const trailers = headerObject(context.responseTrailer, {});
  stream.respond(head, { waitForTrailers: true });
  stream.once("wantTrailers", () => stream.sendTrailers(trailers));
  stream.end(frame);
}

/** A trailers-only response carrying the error's status, message, details and metadata. */
function fail(stream: http2.ServerHttp2Stream, error: ConnectError, context: HandlerContext | undefined): void {
  if (stream.destroyed || stream.headersSent) return;
  const trailer = new Headers(context?.responseTrailer);
  setTrailerStatus(trailer, error);
  const head = headerObject(context?.responseHeader ?? new Headers({ "content-type": "application/grpc+proto" }), {
    ":status": 200,
  });
  trailer.forEach((value, key) => {
    head[key] = value;
  });
  stream.respond(head, { endStream: true });
  // The rest of a request that was refused early is not wanted.
  if (!stream.readableEnded) stream.close(http2.constants.NGHTTP2_NO_ERROR);
}

function headerObject(headers: Headers, into: http2.OutgoingHttpHeaders): http2.OutgoingHttpHeaders {
  headers.forEach((value, key) => {
    into[key] = value;
  });
  return into;
}

function requestHeaders(headers: http2.IncomingHttpHeaders): Headers {
  const result = new Headers();
  for (const key in headers) {
    if (key.charCodeAt(0) === 58 /* ':' */) continue;
    const value = headers[key];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const item of value) result.append(key, item);
    else result.append(key, value);
  }
  return result;
}

function acceptsGzip(headers: http2.IncomingHttpHeaders): boolean {
  const accepted = single(headers["grpc-accept-encoding"]);
  return accepted !== null && accepted.split(",").some((name) => name.trim() === "gzip");
}

function single(value: string | string[] | undefined): string | null {
  if (value === undefined) return null;
  return Array.isArray(value) ? (value[0] ?? null) : value;
}
