// Taking a deleted worker out of service: its stream is closed wherever it
// is held, the lease store forgets it, and the attempts it was running end
// as WORKER_LOST (placed again while attempts remain).

import type { Database } from "../stores/database.ts";
import type { LeaseStore } from "../stores/lease-store.ts";
import type { AttemptRecord } from "../domain.ts";
import type { JobPlacer } from "./job-placer.ts";
import { encodeWorkerMessage } from "./worker-messages.ts";

/** UNAUTHENTICATED: the agent stops, its credential is gone. */
const CREDENTIAL_REVOKED = 16;

/** Call after the worker's row is deleted, with the attempts it held before. */
export async function retireWorker(
  deps: { db: Database; leases: LeaseStore; placer: JobPlacer },
  worker: { id: string; name: string },
  liveAttempts: AttemptRecord[],
  why: string,
): Promise<void> {
  await deps.leases.deliver({
    workerId: worker.id,
    payload: encodeWorkerMessage({ type: "disconnect", reason: why, code: CREDENTIAL_REVOKED }),
  });
  await deps.leases.removeWorker(worker.id);
  for (const attempt of liveAttempts) {
    const job = await deps.db.jobs.get(attempt.jobId);
    if (job !== null) await deps.placer.requeue(job, attempt.attempt, "worker_lost", `worker ${worker.name}: ${why}`);
  }
}
