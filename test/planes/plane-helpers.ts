// Helpers for the plane tests: plain HTTP/1.1 requests as curl makes them,
// `buf curl` as an operator runs it, and a check that nothing is left open.

import { execFile } from "node:child_process";
import http from "node:http";
import path from "node:path";
import { promisify } from "node:util";

const BUF = path.resolve(import.meta.dirname, "../../node_modules/.bin/buf");

export interface HttpReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  httpVersion: string;
}

/** One HTTP/1.1 GET on a fresh connection, closed afterwards (like curl). */
export function httpGet(port: number, urlPath: string): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: urlPath, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, httpVersion: res.httpVersion }));
    });
    req.on("error", reject);
  });
}

/** Runs `buf curl` with gRPC over HTTP/2 prior knowledge against 127.0.0.1:port; returns stdout. */
export async function bufCurl(port: number, args: string[], urlPath = ""): Promise<string> {
  const { stdout } = await promisify(execFile)(
    BUF,
    ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args, `http://127.0.0.1:${port}${urlPath}`],
    { timeout: 15_000 },
  );
  return stdout;
}

/** TCP handles (servers and sockets) still open in this process. */
export function openTcpHandles(): string[] {
  return process.getActiveResourcesInfo().filter((name) => name.startsWith("TCP"));
}

/** Waits a few event-loop turns for closed handles to be released, then returns those still open. */
export async function tcpHandlesAfterSettling(): Promise<string[]> {
  for (let i = 0; i < 20 && openTcpHandles().length > 0; i++) await new Promise((r) => setTimeout(r, 10));
  return openTcpHandles();
}
