// The composition of one Muster server replica: config -> stores -> core ->
// planes. Lifecycle: 'starting' -> 'running' -> 'stopping' -> 'stopped'.
// close() stops accepting, ends agent streams, waits for in-flight work,
// and closes the stores; it leaves no timer or socket behind.

import type { ConnectRouter } from "@connectrpc/connect";
import { AgentService } from "../gen/muster/v1/agent_pb.js";
import { createAgentService } from "./agent-plane/agent-service.ts";
import { createAgentPlaneServer, type AgentPlaneServer } from "./agent-plane/agent-plane-server.ts";
import type { SessionDeps } from "./agent-plane/agent-session.ts";
import type { ServerConfig } from "./config.ts";
import { DEFAULT_SPACE } from "./domain.ts";
import { createHealthStatus, OVERALL, type HealthStatus } from "./grpc/health-service.ts";
import { grpcJsServiceDefinition } from "./grpc/grpcjs-service.ts";
import type { Logger } from "./logger.ts";
import type { Database } from "./stores/database.ts";
import type { LeaseStore } from "./stores/lease-store.ts";

export type ServerState = "starting" | "running" | "stopping" | "stopped";

export interface Address {
  host: string;
  port: number;
}

export interface MusterServer {
  readonly state: ServerState;
  readonly api: Address;
  readonly agent: Address;
  close(): Promise<void>;
}

/** Agent streams get this long to wind down on shutdown before they are cut. */
const AGENT_DRAIN_MS = 2000;
/** A start-up that fails gives the agent calls it held this long to receive their UNAVAILABLE. */
const AGENT_FAILED_START_DRAIN_MS = 1000;
/** No shutdown step may take longer than this. */
const SHUTDOWN_STEP_MS = 5_000;

export async function startServer(config: ServerConfig, logger: Logger): Promise<MusterServer> {
  // The agent plane listens first, before the rest of the server is even
  // loaded: after a restart every agent is retrying with a backoff that grows
  // with the outage, so each second the port stays closed costs up to half a
  // second more once it opens. Calls that arrive meanwhile wait in the agent
  // service (stream open, Hello unread) until the stores are open, store
  // recovery has run and the scheduler is started; then they are handled as
  // ever. Health says NOT_SERVING until then.
  const health = createHealthStatus({ [OVERALL]: "NOT_SERVING" });
  const agentPlane = createAgentPlaneServer({
    host: config.agentHost,
    port: config.agentPort,
    logger: logger.child({ component: "agent-plane" }),
    health,
  });
  const sessions = Promise.withResolvers<SessionDeps>();
  agentPlane.addService(grpcJsServiceDefinition(AgentService), createAgentService(sessions.promise));
  const agent = await agentPlane.start();
  try {
    return await startBehindAgentPlane(config, logger, { health, agentPlane, agent, openSessions: sessions.resolve });
  } catch (error) {
    // Calls held so far end with UNAVAILABLE (given a moment to reach the
    // agents before the connections are cut); the agents try again.
    sessions.reject(error);
    await new Promise((resolve) => setImmediate(resolve));
    await agentPlane.drain(AGENT_FAILED_START_DRAIN_MS);
    await agentPlane.close();
    throw error;
  }
}

/**
 * Loads the modules behind the agent plane (server-modules.ts) a few at a
 * time, with a turn of the event loop between: evaluating them holds the
 * main thread for most of a second (several on a busy machine), and agents
 * connecting meanwhile need the loop for their HTTP/2 handshake. A grpc-js
 * agent whose channel has not finished the handshake fails its call at once
 * and backs off for longer; one that has finished waits, held, until the
 * stores are open.
 */
async function loadBehindAgentPlane(config: ServerConfig): Promise<typeof import("./server-modules.ts")> {
  const stages: Array<() => Promise<unknown>> = [
    () => import("@mikro-orm/core"),
    () => (config.databaseUrl === null ? import("@mikro-orm/pglite") : import("@mikro-orm/postgresql")),
    () => import("@mikro-orm/migrations"),
    () => import("./stores/postgres/open-database.ts"),
    () => import("./stores/redis/redis-lease-store.ts"),
    () => import("@connectrpc/connect-node"),
    () => import("./api/api-plane.ts"),
    () => import("./scheduler/job-placer.ts"),
  ];
  for (const stage of stages) {
    await stage();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return import("./server-modules.ts");
}

interface AgentPlaneStarted {
  health: HealthStatus;
  agentPlane: AgentPlaneServer;
  agent: Address;
  /** Lets through the agent calls held since the agent plane started listening. */
  openSessions: (deps: SessionDeps) => void;
}

/** Everything behind the agent plane: stores, scheduler, API plane. Closes what it opened if it fails. */
async function startBehindAgentPlane(
  config: ServerConfig,
  logger: Logger,
  { health, agentPlane, agent, openSessions }: AgentPlaneStarted,
): Promise<MusterServer> {
  let state: ServerState = "starting";
  const {
    JobService,
    TargetService,
    WorkerService,
    WorkerPoolService,
    createSessionRegistry,
    createApiPlane,
    jobHandlers,
    targetHandlers,
    workerHandlers,
    workerPoolHandlers,
    createMetrics,
    createBuiltinWorker,
    createConfigCache,
    createJobEvents,
    createJobLifecycle,
    createJobPlacer,
    withLocalDelivery,
    createStoreRecovery,
    decodeWorkerMessage,
    createMemoryLeaseStore,
    openDatabase,
    createRedisLeaseStore,
  } = await loadBehindAgentPlane(config);
  // Postgres and Redis are opened side by side.
  const store: LeaseStore =
    config.redisUrl === null
      ? createMemoryLeaseStore()
      : createRedisLeaseStore({ url: config.redisUrl, keyPrefix: config.redisKeyPrefix, logger });
  const [opened, started] = await Promise.allSettled([
    openDatabase({
      url: config.databaseUrl ?? undefined,
      dataDir: config.dataDir,
      schema: config.databaseSchema ?? undefined,
      preparedStatements: config.databasePreparedStatements,
      logger,
    }),
    store.start(),
  ]);
  if (opened.status === "rejected" || started.status === "rejected") {
    if (opened.status === "fulfilled") await opened.value.close();
    if (started.status === "fulfilled") await store.close();
    throw opened.status === "rejected" ? opened.reason : (started as PromiseRejectedResult).reason;
  }
  const db: Database = opened.value;
  let defaultPool;
  try {
    defaultPool = await db.ensureSpace(DEFAULT_SPACE);
  } catch (error) {
    await store.close();
    await db.close();
    throw error;
  }

  const metrics = createMetrics();
  const registry = createSessionRegistry();
  // Everything below delivers through this: straight to a session held here, else via the store.
  const leases = withLocalDelivery(store, registry);
  const events = createJobEvents(leases);
  const builtin = createBuiltinWorker({
    db,
    leases,
    events,
    logger: logger.child({ component: "builtin-worker" }),
    enabled: config.builtinWorker === "enabled",
    capacity: config.builtinWorkerCapacity,
    workDir: `${config.dataDir}/builtin-work`,
    leaseTtlMs: config.leaseTtlMs,
    onFinished: (job) => {
      metrics.jobsFinished.inc({ state: job.state });
      if (job.resolvedPoolId !== null) void placer.drainPool(job.resolvedPoolId);
    },
  });
  const cache = createConfigCache(db);
  const placer = createJobPlacer({
    db,
    cache,
    leases,
    events,
    logger: logger.child({ component: "placer" }),
    leaseTtlMs: config.leaseTtlMs,
    assignmentTimeoutMs: config.assignmentTimeoutMs,
    builtin,
    verifyStore: () => recovery.verify(),
    onPlaced: (job, submittedAt) => {
      metrics.placements.inc({ result: "assigned" });
      metrics.placementSeconds.observe((Date.now() - submittedAt.getTime()) / 1000);
    },
  });
  const lifecycle = createJobLifecycle({
    db,
    leases,
    events,
    placer,
    logger: logger.child({ component: "lifecycle" }),
    leaseTtlMs: config.leaseTtlMs,
    onFinished: (job) => metrics.jobsFinished.inc({ state: job.state }),
  });
  const recovery = createStoreRecovery({
    db,
    leases,
    logger: logger.child({ component: "store-recovery" }),
    leaseTtlMs: config.leaseTtlMs,
    setPaused: (paused) => placer.setPaused(paused),
    resume: () => placer.drainAll(),
    onStateChange: (recoveryState) => health.set("", recoveryState === "ok" && state === "running" ? "SERVING" : "NOT_SERVING"),
    reattachSessions: async () => {
      let count = 0;
      for (const session of registry.all()) {
        const worker = await db.workers.get(session.workerId);
        if (worker === null) continue;
        await leases.attach(
          { workerId: worker.id, poolId: worker.poolId, capacity: worker.capacity, labels: worker.labels, acceptsWork: worker.state === "enabled" },
          session.sessionId,
          config.replicaId,
          config.heartbeatTtlMs,
        );
        count++;
      }
      return count;
    },
  });
  const unsubscribeDelivery = await leases.onDelivery(config.replicaId, (delivery) => {
    const session = registry.get(delivery.workerId);
    session?.deliver(decodeWorkerMessage(delivery.payload));
  });

  const sessionDeps: SessionDeps = {
    db,
    leases,
    events,
    placer,
    lifecycle,
    registry,
    logger: logger.child({ component: "agent-session" }),
    replicaId: config.replicaId,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    heartbeatTtlMs: config.heartbeatTtlMs,
    leaseTtlMs: config.leaseTtlMs,
    maxChunkBytes: config.maxChunkBytes,
    onLogChunks: (count) => metrics.logChunks.inc(count),
    verifyStore: () => recovery.verify(),
    onSessionCount: (delta) => metrics.connectedAgents.inc(delta),
  };

  const apiLogger = logger.child({ component: "api" });
  const apiPlane = createApiPlane({
    host: config.apiHost,
    port: config.apiPort,
    logger: apiLogger,
    health,
    metrics: metrics.registry,
    services: [WorkerPoolService, WorkerService, TargetService, JobService],
    routes: (router: ConnectRouter) => {
      router.service(WorkerPoolService, workerPoolHandlers({ db, cache, leases, placer, logger: apiLogger }));
      router.service(WorkerService, workerHandlers({ db, leases, placer, logger: apiLogger }));
      router.service(TargetService, targetHandlers({ db, cache, logger: apiLogger }));
      router.service(
        JobService,
        jobHandlers({
          db,
          cache,
          placer: {
            ...placer,
            submit: async (input) => {
              const job = await placer.submit(input);
              metrics.jobsSubmitted.inc({ pool: job.resolvedPoolId ?? "" });
              return job;
            },
          },
          lifecycle,
          events,
          logger: apiLogger,
        }),
      );
    },
    readiness: async () => {
      const detail: Record<string, string> = {};
      let ready = state === "running" && !recovery.recovering;
      detail.server = state;
      if (recovery.recovering) detail.leaseStore = "rebuilding from Postgres";
      try {
        await db.pools.defaultPool(DEFAULT_SPACE);
        detail.database = "ok";
      } catch (error) {
        ready = false;
        detail.database = `unreachable: ${(error as Error).message}`;
      }
      try {
        await leases.workerStatus([]);
        detail.leaseStore ??= "ok";
      } catch (error) {
        ready = false;
        detail.leaseStore = `unreachable: ${(error as Error).message}`;
      }
      return { ready, detail };
    },
  });

  let api: Address;
  try {
    api = await apiPlane.start();
    await builtin.start();
    // A store that lost its data while no replica ran is rebuilt here, before
    // any agent is let through to ask about its running attempts.
    await recovery.start();
  } catch (error) {
    await apiPlane.close();
    await recovery.close();
    await builtin.close();
    await unsubscribeDelivery();
    await leases.close();
    await db.close();
    throw error;
  }
  placer.start();
  lifecycle.start();
  state = "running";
  health.set("", "SERVING");
  openSessions(sessionDeps);
  void placer.drainAll();

  logger.info(
    {
      event: "server_started",
      api: `${api.host}:${api.port}`,
      agent: `${agent.host}:${agent.port}`,
      replicaId: config.replicaId,
      database: config.databaseUrl === null ? `embedded (${config.dataDir})` : "postgres",
      leaseStore: config.redisUrl === null ? "in-process" : "redis",
      builtinWorker: config.builtinWorker,
      defaultPoolId: defaultPool.id,
    },
    "Muster is running",
  );

  return {
    get state() {
      return state;
    },
    api,
    agent,
    async close() {
      if (state === "stopping" || state === "stopped") return;
      state = "stopping";
      health.set("", "NOT_SERVING");
      logger.info({ event: "server_stopping" }, "Muster is stopping");
      // Each step gets a deadline: a stuck step is logged and passed over, so
      // shutdown always finishes (a process manager would kill us anyway).
      const step = async (name: string, run: () => Promise<unknown>) => {
        let timer: NodeJS.Timeout | undefined;
        const overran = new Promise<"overran">((resolve) => {
          timer = setTimeout(() => resolve("overran"), SHUTDOWN_STEP_MS);
          timer.unref();
        });
        const result = await Promise.race([run().catch((error) => logger.warn({ event: "shutdown_step_failed", step: name, err: error }, "shutdown step failed")), overran]);
        clearTimeout(timer);
        if (result === "overran") logger.warn({ event: "shutdown_step_overran", step: name, ms: SHUTDOWN_STEP_MS }, "shutdown step did not finish in time; going on");
      };
      await step("api plane", () => apiPlane.close());
      await step("agent plane", async () => {
        await agentPlane.drain(AGENT_DRAIN_MS);
        await agentPlane.close();
      });
      await step("store recovery", () => recovery.close());
      await step("placer", () => placer.close());
      await step("lifecycle", () => lifecycle.close());
      await step("built-in worker", () => builtin.close());
      await step("delivery", () => unsubscribeDelivery());
      await step("lease store", () => leases.close());
      await step("database", () => db.close());
      state = "stopped";
      logger.info({ event: "server_stopped" }, "Muster stopped");
    },
  };
}
