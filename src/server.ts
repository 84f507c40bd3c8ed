// The composition of one Muster server replica: config -> stores -> core ->
// planes. Lifecycle: 'starting' -> 'running' -> 'stopping' -> 'stopped'.
// close() stops accepting, ends agent streams, waits for in-flight work,
// and closes the stores; it leaves no timer or socket behind.

import type { ConnectRouter } from "@connectrpc/connect";
import { AgentService } from "../gen/muster/v1/agent_pb.js";
import { JobService } from "../gen/muster/v1/job_pb.js";
import { TargetService } from "../gen/muster/v1/target_pb.js";
import { WorkerService } from "../gen/muster/v1/worker_pb.js";
import { WorkerPoolService } from "../gen/muster/v1/worker_pool_pb.js";
import { createAgentService } from "./agent-plane/agent-service.ts";
import { createAgentPlaneServer } from "./agent-plane/agent-plane-server.ts";
import { createSessionRegistry } from "./agent-plane/session-registry.ts";
import { withLocalDelivery } from "./scheduler/local-delivery.ts";
import { createApiPlane } from "./api/api-plane.ts";
import { jobHandlers } from "./api/job-handlers.ts";
import { targetHandlers } from "./api/target-handlers.ts";
import { workerHandlers } from "./api/worker-handlers.ts";
import { workerPoolHandlers } from "./api/worker-pool-handlers.ts";
import type { ServerConfig } from "./config.ts";
import { DEFAULT_SPACE } from "./domain.ts";
import { createHealthStatus } from "./grpc/health-service.ts";
import { grpcJsServiceDefinition } from "./grpc/grpcjs-service.ts";
import type { Logger } from "./logger.ts";
import { createMetrics } from "./metrics.ts";
import { createBuiltinWorker } from "./scheduler/builtin-worker.ts";
import { createConfigCache } from "./scheduler/config-cache.ts";
import { createJobEvents } from "./scheduler/job-events.ts";
import { createJobLifecycle } from "./scheduler/job-lifecycle.ts";
import { createJobPlacer } from "./scheduler/job-placer.ts";
import { createStoreRecovery } from "./scheduler/store-recovery.ts";
import { decodeWorkerMessage } from "./scheduler/worker-messages.ts";
import type { LeaseStore } from "./stores/lease-store.ts";
import { createMemoryLeaseStore } from "./stores/memory/memory-lease-store.ts";
import { openDatabase } from "./stores/postgres/open-database.ts";
import { createRedisLeaseStore } from "./stores/redis/redis-lease-store.ts";

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
/** No shutdown step may take longer than this. */
const SHUTDOWN_STEP_MS = 5_000;

export async function startServer(config: ServerConfig, logger: Logger): Promise<MusterServer> {
  let state: ServerState = "starting";
  const db = await openDatabase({
    url: config.databaseUrl ?? undefined,
    dataDir: config.dataDir,
    schema: config.databaseSchema ?? undefined,
    logger,
  });
  const store: LeaseStore =
    config.redisUrl === null
      ? createMemoryLeaseStore()
      : createRedisLeaseStore({ url: config.redisUrl, keyPrefix: config.redisKeyPrefix, logger });
  try {
    await store.start();
  } catch (error) {
    await db.close();
    throw error;
  }
  const defaultPool = await db.ensureSpace(DEFAULT_SPACE);

  const metrics = createMetrics();
  const health = createHealthStatus();
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

  const agentPlane = createAgentPlaneServer({
    host: config.agentHost,
    port: config.agentPort,
    logger: logger.child({ component: "agent-plane" }),
    health,
  });
  agentPlane.addService(
    grpcJsServiceDefinition(AgentService),
    createAgentService({
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
    }),
  );

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
  let agent: Address;
  try {
    agent = await agentPlane.start();
    api = await apiPlane.start();
  } catch (error) {
    await agentPlane.close();
    await unsubscribeDelivery();
    await leases.close();
    await db.close();
    throw error;
  }
  await builtin.start();
  await recovery.start();
  placer.start();
  lifecycle.start();
  state = "running";
  health.set("", "SERVING");
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
