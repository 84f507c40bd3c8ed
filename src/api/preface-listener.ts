// One plaintext port for HTTP/2 and HTTP/1.1. gRPC clients open with the
// HTTP/2 connection preface (prior knowledge, no upgrade); curl, Prometheus
// and Kubernetes probes speak HTTP/1.1. A Node http2 server alone refuses
// HTTP/1.1 without TLS/ALPN, so this listener reads the first bytes of each
// connection, puts them back, and hands the socket to the right server by
// emitting 'connection' on it. Neither inner server listens itself.

import type http from "node:http";
import type http2 from "node:http2";
import net from "node:net";

/** RFC 9113 §3.4: every HTTP/2 connection over cleartext opens with these 24 octets. */
export const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

export interface PrefaceListenerOptions {
  http1: http.Server;
  http2: http2.Http2Server;
  /** A connection that has not told us its protocol within this time is closed. */
  prefaceTimeoutMs: number;
  /** Called for each accepted socket, so the owner can track and destroy them on close. */
  onSocket?: (socket: net.Socket) => void;
}

export function createPrefaceListener(options: PrefaceListenerOptions): net.Server {
  return net.createServer({ noDelay: true }, (socket) => {
    options.onSocket?.(socket);
    route(socket, options);
  });
}

function route(socket: net.Socket, options: PrefaceListenerOptions): void {
  const chunks: Buffer[] = [];
  let length = 0;

  const onTimeout = () => socket.destroy();
  const onError = () => socket.destroy();
  const onReadable = () => {
    for (let chunk: Buffer | null = socket.read(); chunk !== null; chunk = socket.read()) {
      chunks.push(chunk);
      length += chunk.length;
    }
    const peeked = Buffer.concat(chunks, length);
    const compared = Math.min(peeked.length, HTTP2_PREFACE.length);
    const http2 = peeked.subarray(0, compared).equals(HTTP2_PREFACE.subarray(0, compared));
    if (peeked.length === 0 || (http2 && peeked.length < HTTP2_PREFACE.length)) return;
    socket.removeListener("readable", onReadable);
    socket.removeListener("timeout", onTimeout);
    socket.removeListener("error", onError);
    socket.setTimeout(0);
    socket.unshift(peeked);
    (http2 ? options.http2 : options.http1).emit("connection", socket);
  };

  socket.setTimeout(options.prefaceTimeoutMs);
  socket.on("timeout", onTimeout);
  socket.on("error", onError);
  socket.on("readable", onReadable);
}
