// What a server replica needs beyond its agent plane: the stores (the ORM,
// the Redis client), the scheduler and the API plane. server.ts loads this
// module only once the agent plane listens, so that agents, whose reconnect
// backoff grows with the outage, find the port open a second sooner after a
// restart; loading these modules is most of a start-up's CPU.

export { JobService } from "../gen/muster/v1/job_pb.js";
export { TargetService } from "../gen/muster/v1/target_pb.js";
export { WorkerService } from "../gen/muster/v1/worker_pb.js";
export { WorkerPoolService } from "../gen/muster/v1/worker_pool_pb.js";
export { createSessionRegistry } from "./agent-plane/session-registry.ts";
export { createApiPlane } from "./api/api-plane.ts";
export { jobHandlers } from "./api/job-handlers.ts";
export { targetHandlers } from "./api/target-handlers.ts";
export { workerHandlers } from "./api/worker-handlers.ts";
export { workerPoolHandlers } from "./api/worker-pool-handlers.ts";
export { createMetrics } from "./metrics.ts";
export { createBuiltinWorker } from "./scheduler/builtin-worker.ts";
export { createConfigCache } from "./scheduler/config-cache.ts";
export { createJobEvents } from "./scheduler/job-events.ts";
export { createJobLifecycle } from "./scheduler/job-lifecycle.ts";
export { createJobPlacer } from "./scheduler/job-placer.ts";
export { withLocalDelivery } from "./scheduler/local-delivery.ts";
export { createStoreRecovery } from "./scheduler/store-recovery.ts";
export { decodeWorkerMessage } from "./scheduler/worker-messages.ts";
export { createMemoryLeaseStore } from "./stores/memory/memory-lease-store.ts";
export { openDatabase } from "./stores/postgres/open-database.ts";
export { createRedisLeaseStore } from "./stores/redis/redis-lease-store.ts";
