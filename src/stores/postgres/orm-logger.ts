// Routes MikroORM's own log lines (queries when `debug` is on, connection
// warnings always) into the process's pino logger as structured events,
// instead of MikroORM's coloured console output.

import type { LogContext, Logger as OrmLogger, LoggerNamespace } from "@mikro-orm/core";
import type { Logger } from "../../logger.ts";

export function createOrmLogger(logger: Logger, debug: boolean): OrmLogger {
  let debugMode: boolean | LoggerNamespace[] = debug;

  const isEnabled = (namespace: LoggerNamespace, context?: LogContext): boolean => {
    if (context?.enabled !== undefined) return context.enabled;
    const mode = context?.debugMode ?? debugMode;
    return mode === true || (Array.isArray(mode) && mode.includes(namespace));
  };

  const write = (namespace: string, message: string, context: LogContext | undefined): void => {
    const fields = { component: "mikro-orm", namespace, label: context?.label };
    if (context?.level === "error") logger.error(fields, message);
    else if (context?.level === "warning") logger.warn(fields, message);
    else logger.debug(fields, message);
  };

  return {
    log(namespace, message, context) {
      if (context?.level === "error" || context?.level === "warning" || isEnabled(namespace as LoggerNamespace, context)) {
        write(namespace, message, context);
      }
    },
    error(namespace, message, context) {
      write(namespace, message, { ...context, level: "error" });
    },
    warn(namespace, message, context) {
      write(namespace, message, { ...context, level: "warning" });
    },
    logQuery(context) {
      const namespace = context.namespace ?? "query";
      if (context.level !== "error" && !isEnabled(namespace, context)) return;
      const fields = {
        component: "mikro-orm",
        namespace,
        query: context.query,
        tookMs: context.took,
        results: context.results,
        affected: context.affected,
      };
      if (context.level === "error") logger.error(fields, "query failed");
      else logger.debug(fields, "query");
    },
    setDebugMode(mode) {
      debugMode = mode;
    },
    isEnabled,
  };
}
