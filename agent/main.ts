// The agent CLI: `node agent/main.ts --url 127.0.0.1:7071 --token ...`
// (or `npm run agent -- ...`). Exit codes: 0 stopped cleanly (drained or
// closed), 1 internal error, 2 bad configuration or state file, 3 credential
// or registration token rejected.
//
// Signals: the first SIGTERM or SIGINT drains (no new work, running jobs
// finish and are reported, then exit 0); the second cancels running jobs with
// their grace period and exits; a third kills them at once and exits 1.

import { createLogger } from "../src/logger.ts";
import { createAgent, EXIT_CONFIG, EXIT_INTERNAL } from "./agent.ts";
import { agentUsage, ConfigError, loadAgentConfig, type AgentConfig } from "./config.ts";

const argv = process.argv.slice(2);
if (argv.includes("--help") || argv.includes("-h")) {
  process.stdout.write(`${agentUsage()}\n`);
  process.exit(0);
}

let config: AgentConfig;
try {
  config = loadAgentConfig(argv);
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`muster-agent: ${error.message}\n`);
  process.exit(EXIT_CONFIG);
}

const logger = createLogger("muster-agent", config.logLevel);
const agent = createAgent(config, { logger });

let signals = 0;
function onSignal(signal: NodeJS.Signals): void {
  signals++;
  if (signals === 1) {
    logger.info({ event: "signal", signal }, "shutting down: draining (send it again to cancel running jobs)");
    void agent.drain();
  } else if (signals === 2) {
    logger.warn({ event: "signal", signal }, "cancelling running jobs (send it again to kill them at once)");
    void agent.close();
  } else {
    logger.error({ event: "signal", signal }, "killing running jobs and exiting now");
    agent.kill();
    process.exit(EXIT_INTERNAL);
  }
}
process.on("SIGTERM", onSignal);
process.on("SIGINT", onSignal);
// Last resort: whatever way the process ends, no script outlives it.
process.on("exit", () => agent.kill());
process.on("uncaughtException", (error) => {
  logger.fatal({ event: "agent_crashed", err: error }, "uncaught exception");
  agent.kill();
  process.exit(EXIT_INTERNAL);
});

agent.start().catch(() => {
  // Reported through `stopped` below, with its exit code.
});
const stop = await agent.stopped;
process.off("SIGTERM", onSignal);
process.off("SIGINT", onSignal);
process.exitCode = stop.exitCode;
