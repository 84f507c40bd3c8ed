// Structured logs: one JSON line per event on stdout, where process managers
// and `docker logs` collect them. Secrets (tokens, credentials, authorization
// metadata) are never logged: the redact paths below are a safety net, not a
// licence to pass them in.

import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(name: string, level = process.env.MUSTER_LOG_LEVEL ?? "info"): Logger {
  return pino({
    name,
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: ["token", "credential", "registrationToken", "authorization", "*.token", "*.credential", "*.authorization"],
      censor: "[redacted]",
    },
  });
}

/** A logger that drops everything, for tests that assert on behaviour, not output. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
