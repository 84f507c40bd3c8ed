// HTTP/2 flow-control windows for the agent plane. An agent streams its log
// chunks on one Connect stream, and HTTP/2 lets it have only a window's worth
// of bytes unacknowledged; the server acknowledges (WINDOW_UPDATE) as its
// event loop reads. With HTTP/2's default 64 KiB windows, one 50 KB chunk
// fills the window, so an agent writing 1 MB/s waits a server round trip
// (event-loop delay included) per chunk and falls behind as soon as the loop
// is busy: its output then reaches the server, and followers, seconds late.
//
// grpc-js has no server option for either window (only its client has
// 'grpc-node.flow_control_window'), so these set them on its internals:
// the initial stream window in the SETTINGS the server sends, and the
// connection window on each new session. If a grpc-js upgrade moves those
// internals, the server warns and runs with the defaults.
//
// Memory: an agent the server stops reading (a session pauses reading past
// its pending-message limit) can leave up to STREAM_WINDOW_BYTES unread in
// the server per stream, CONNECTION_WINDOW_BYTES per connection.

import type http2 from "node:http2";
import type * as grpc from "@grpc/grpc-js";
import type { Logger } from "../logger.ts";

export const STREAM_WINDOW_BYTES = 512 * 1024;
export const CONNECTION_WINDOW_BYTES = 1024 * 1024;

interface GrpcServerInternals {
  commonServerOptions?: http2.ServerOptions;
  http2Servers?: Map<http2.Http2Server, unknown>;
}

/** Call before bindAsync: the stream window goes into the SETTINGS of every connection. */
export function widenStreamWindow(server: grpc.Server, logger: Logger): void {
  const internals = server as unknown as GrpcServerInternals;
  if (internals.commonServerOptions === undefined) {
    logger.warn({ event: "http2_window_unchanged" }, "cannot widen the agent plane's HTTP/2 stream window (grpc-js internals changed)");
    return;
  }
  internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, initialWindowSize: STREAM_WINDOW_BYTES };
}

/** Call after bindAsync: widens the connection window of every connection accepted from now on. */
export function widenConnectionWindows(server: grpc.Server, logger: Logger): void {
  const servers = (server as unknown as GrpcServerInternals).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) {
    logger.warn({ event: "http2_window_unchanged" }, "cannot widen the agent plane's HTTP/2 connection window (grpc-js internals changed)");
    return;
  }
  for (const http2Server of servers.keys()) {
    http2Server.on("session", (session: http2.ServerHttp2Session) => {
      try {
        session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
      } catch (error) {
        logger.warn({ event: "http2_window_unchanged", err: error }, "cannot widen an agent connection's HTTP/2 window");
      }
    });
  }
}
