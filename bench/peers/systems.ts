// The three peers behind one small interface, each configured the way its
// documentation runs it durably: BullMQ on this machine's Redis (as the
// machine runs it), graphile-worker and pg-boss on Postgres with
// synchronous_commit on (the server default; checked by the harness).
// Every run has its own BullMQ prefix or Postgres schema.
//
// Concurrency is the same total for every system: `workers` x `slots`.
//   BullMQ           `workers` Worker instances, concurrency `slots` each
//   graphile-worker  one runner, concurrency workers x slots (its worker pool)
//   pg-boss          localConcurrency `workers`, batchSize `slots` (burstWhenBatchFull)

import { EventEmitter } from "node:events";
import { Queue, Worker } from "bullmq";
import { makeWorkerUtils, run as runGraphile, type Runner } from "graphile-worker";
import { Redis } from "ioredis";
import { PgBoss } from "pg-boss";
import { DATABASE_URL, REDIS_URL } from "../lib/stores.ts";

export type PeerName = "bullmq" | "graphile-worker" | "pg-boss";

export interface PeerContext {
  system: PeerName;
  /** BullMQ prefix (without the trailing colon BullMQ adds) or Postgres schema. */
  namespace: string;
  queue: string;
}

export interface Payload {
  /** The job's name/number, the key for latency and loss accounting. */
  n: string;
}

export interface Workers {
  stop(): Promise<void>;
}

export interface Producer {
  add(payload: Payload): Promise<void>;
  close(): Promise<void>;
}

/** Installs the system's schema or queue; run once before workers and producer start. */
export async function prepare(ctx: PeerContext): Promise<void> {
  if (ctx.system === "graphile-worker") {
    const utils = await makeWorkerUtils({ connectionString: DATABASE_URL, schema: ctx.namespace });
    await utils.migrate();
    await utils.release();
  } else if (ctx.system === "pg-boss") {
    const boss = new PgBoss({ connectionString: DATABASE_URL, schema: ctx.namespace, max: 2, supervise: false, schedule: false });
    boss.on("error", () => {});
    await boss.start();
    await boss.createQueue(ctx.queue, { notify: true } as never);
    await boss.stop({ graceful: false, wait: true } as never);
  }
}

export async function startWorkers(
  ctx: PeerContext,
  shape: { workers: number; slots: number },
  onStart: (payload: Payload) => void,
  onDone: (payload: Payload) => void,
): Promise<Workers> {
  switch (ctx.system) {
    case "bullmq": {
      const workers: Worker[] = [];
      for (let i = 0; i < shape.workers; i++) {
        const worker = new Worker(
          ctx.queue,
          async (job) => {
            onStart(job.data as Payload);
          },
          {
            connection: new Redis(REDIS_URL, { maxRetriesPerRequest: null }),
            prefix: ctx.namespace,
            concurrency: shape.slots,
          },
        );
        worker.on("completed", (job) => onDone(job.data as Payload));
        worker.on("error", () => {});
        workers.push(worker);
      }
      await Promise.all(workers.map((w) => w.waitUntilReady()));
      return {
        async stop() {
          await Promise.all(workers.map((w) => w.close(true)));
        },
      };
    }
    case "graphile-worker": {
      const events = new EventEmitter();
      events.on("job:complete", ({ job, error }: { job: { payload: Payload }; error: unknown }) => {
        if (!error) onDone(job.payload);
      });
      const runner: Runner = await runGraphile({
        connectionString: DATABASE_URL,
        schema: ctx.namespace,
        concurrency: shape.workers * shape.slots,
        maxPoolSize: 20,
        noHandleSignals: true,
        pollInterval: 2000,
        events: events as never,
        taskList: {
          noop: async (payload) => {
            onStart(payload as Payload);
          },
        },
      });
      return {
        async stop() {
          await runner.stop();
        },
      };
    }
    case "pg-boss": {
      const boss = new PgBoss({ connectionString: DATABASE_URL, schema: ctx.namespace, max: 20, supervise: false, schedule: false, useListenNotify: true } as never);
      boss.on("error", () => {});
      await boss.start();
      await boss.work(
        ctx.queue,
        // burstWhenBatchFull: fetch again at once while batches come back
        // full. Without it a worker that is not notified (the jobs were
        // queued before it started) waits out the 30 s backstop between
        // batches once LISTEN/NOTIFY is up.
        { localConcurrency: shape.workers, batchSize: shape.slots, pollingIntervalSeconds: 0.5, burstWhenBatchFull: true } as never,
        (async (jobs: Array<{ data: Payload }>) => {
          for (const job of jobs) onStart(job.data);
          // pg-boss completes the batch after the handler resolves; the
          // completion is counted here, a hair early (the harness checks the
          // stored states afterwards).
          queueMicrotask(() => {
            for (const job of jobs) onDone(job.data);
          });
        }) as never,
      );
      return {
        async stop() {
          await boss.stop({ graceful: true, wait: true, timeout: 5000 } as never);
        },
      };
    }
  }
}

export async function startProducer(ctx: PeerContext): Promise<Producer> {
  switch (ctx.system) {
    case "bullmq": {
      const connection = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
      const queue = new Queue(ctx.queue, { connection, prefix: ctx.namespace });
      await queue.waitUntilReady();
      return {
        async add(payload) {
          await queue.add("noop", payload, { removeOnComplete: true });
        },
        async close() {
          await queue.close();
          connection.disconnect();
        },
      };
    }
    case "graphile-worker": {
      const utils = await makeWorkerUtils({ connectionString: DATABASE_URL, schema: ctx.namespace });
      return {
        async add(payload) {
          await utils.addJob("noop", payload as never);
        },
        async close() {
          await utils.release();
        },
      };
    }
    case "pg-boss": {
      const boss = new PgBoss({ connectionString: DATABASE_URL, schema: ctx.namespace, max: 10, supervise: false, schedule: false } as never);
      boss.on("error", () => {});
      await boss.start();
      return {
        async add(payload) {
          await boss.send(ctx.queue, payload);
        },
        async close() {
          await boss.stop({ graceful: false, wait: true } as never);
        },
      };
    }
  }
}

/** Jobs the system still holds that did not complete (waiting, active, failed, retrying). */
export async function unfinished(ctx: PeerContext, pgQuery: (sql: string) => Promise<number>): Promise<number> {
  switch (ctx.system) {
    case "bullmq": {
      const connection = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
      const queue = new Queue(ctx.queue, { connection, prefix: ctx.namespace });
      try {
        const counts = await queue.getJobCounts("waiting", "active", "delayed", "failed", "prioritized", "waiting-children");
        return Object.values(counts).reduce((a, b) => a + b, 0);
      } finally {
        await queue.close();
        connection.disconnect();
      }
    }
    case "graphile-worker":
      return pgQuery(`select count(*)::int as n from "${ctx.namespace}"._private_jobs`);
    case "pg-boss":
      return pgQuery(`select count(*)::int as n from "${ctx.namespace}".job where state <> 'completed'`);
  }
}
