// The plain-HTTP endpoints beside the RPCs on the API plane, for Kubernetes
// probes and Prometheus: GET /healthz (the process is up), GET /readyz (it
// can serve: stores reachable, started), GET /metrics (prom-client text).
// Served for every request path that is not an RPC, over HTTP/1.1 and HTTP/2.

import type { ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import type { Logger } from "../logger.ts";

/** A Node request handler for HTTP/1.1 and HTTP/2 requests alike. */
export type NodeHandlerFn = NonNullable<ConnectNodeAdapterOptions["fallback"]>;
type NodeServerRequest = Parameters<NodeHandlerFn>[0];
type NodeServerResponse = Parameters<NodeHandlerFn>[1];

export interface Readiness {
  ready: boolean;
  /** One entry per dependency, e.g. { database: "ok", leaseStore: "unreachable: ..." }. */
  detail: Record<string, string>;
}

export interface HttpEndpointsOptions {
  logger: Logger;
  metrics: Registry;
  readiness: () => Promise<Readiness>;
  /** A readiness check slower than this answers 503. */
  readinessTimeoutMs: number;
}

export function httpEndpoints(options: HttpEndpointsOptions): NodeHandlerFn {
  const routes: Record<string, () => Promise<Reply>> = {
    "/healthz": async () => ({ status: 200, type: "text/plain; charset=utf-8", body: "ok\n" }),
    "/readyz": async () => {
      const readiness = await checkReadiness(options);
      return {
        status: readiness.ready ? 200 : 503,
        type: "application/json",
        body: `${JSON.stringify(readiness)}\n`,
      };
    },
    "/metrics": async () => ({ status: 200, type: options.metrics.contentType, body: await options.metrics.metrics() }),
  };

  return (req, res) => {
    const started = performance.now();
    const path = (req.url ?? "/").split("?", 1)[0];
    const route = routes[path];
    const reply: Promise<Reply> = !route
      ? Promise.resolve({ status: 404, type: "text/plain; charset=utf-8", body: "not found\n" })
      : req.method !== "GET" && req.method !== "HEAD"
        ? Promise.resolve({ status: 405, type: "text/plain; charset=utf-8", body: "method not allowed\n", allow: "GET, HEAD" })
        : route();
    reply
      .catch((error: unknown): Reply => {
        options.logger.warn({ path, err: error }, "http endpoint failed");
        return { status: 500, type: "text/plain; charset=utf-8", body: "internal error\n" };
      })
      .then((r) => {
        send(req, res, r);
        options.logger.debug(
          { method: req.method, path, status: r.status, httpVersion: req.httpVersion, durationMs: Math.round(performance.now() - started) },
          "http",
        );
      });
  };
}

interface Reply {
  status: number;
  type: string;
  body: string;
  allow?: string;
}

function send(req: NodeServerRequest, res: NodeServerResponse, reply: Reply): void {
  const headers: Record<string, string | number> = {
    "content-type": reply.type,
    "content-length": Buffer.byteLength(reply.body),
    "cache-control": "no-store",
  };
  if (reply.allow) headers.allow = reply.allow;
  // Both response types have writeHead/end; TypeScript cannot call through the union.
  const response = res as unknown as { writeHead(status: number, headers: Record<string, string | number>): void; end(body?: string): void };
  response.writeHead(reply.status, headers);
  response.end(req.method === "HEAD" ? undefined : reply.body);
}

async function checkReadiness(options: HttpEndpointsOptions): Promise<Readiness> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Readiness>((resolve) => {
    timer = setTimeout(
      () => resolve({ ready: false, detail: { readiness: `no answer within ${options.readinessTimeoutMs} ms` } }),
      options.readinessTimeoutMs,
    );
    timer.unref();
  });
  try {
    return await Promise.race([options.readiness(), timeout]);
  } catch (error) {
    return { ready: false, detail: { readiness: `check failed: ${(error as Error).message}` } };
  } finally {
    clearTimeout(timer);
  }
}
