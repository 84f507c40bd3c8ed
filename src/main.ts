// The server's command line: config -> server -> signals.
//   npm start -- --api-addr 127.0.0.1:7070 ...   (see --help)

import { enableCompileCache } from "node:module";

// Start-up time is restart time for every agent (they wait for the agent
// plane to listen): Node's compile cache keeps the compiled, type-stripped
// modules (in the OS temp directory, or NODE_COMPILE_CACHE), which saves
// about a quarter of the start-up CPU. Only modules loaded after this call
// use it, hence the dynamic imports below.
enableCompileCache();
const { ConfigError, loadConfig, usage } = await import("./config.ts");
const { createLogger } = await import("./logger.ts");
const { startServer } = await import("./server.ts");

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(usage());
    return;
  }
  let config;
  try {
    config = loadConfig(argv);
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`muster: ${error.message}`);
      process.exitCode = 2;
      return;
    }
    throw error;
  }
  const logger = createLogger("muster", config.logLevel);
  const server = await startServer(config, logger);
  const hint = [
    `Muster API plane on ${server.api.host}:${server.api.port}, agent plane on ${server.agent.host}:${server.agent.port}.`,
    `Create a pool and get its registration token (shown once):`,
    `  grpcurl -plaintext -d '{"name":"linux"}' ${server.api.host}:${server.api.port} muster.v1.WorkerPoolService/CreateWorkerPool`,
    `Then start an agent with it:`,
    `  npm run agent -- --url ${server.agent.host}:${server.agent.port} --token <registrationToken> --name a1`,
  ];
  process.stderr.write(`${hint.join("\n")}\n`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      logger.warn({ event: "forced_exit", signal }, "second signal: exiting now");
      process.exit(1);
    }
    stopping = true;
    logger.info({ event: "signal", signal }, "shutting down");
    server.close().then(
      () => process.exit(0),
      (error) => {
        logger.error({ event: "shutdown_failed", err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((error) => {
  console.error("muster: failed to start:", error);
  process.exit(1);
});
