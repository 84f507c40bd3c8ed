// Log chunks, keyed by (job id, attempt, seq) so a re-sent chunk is a no-op.
// No foreign key to job_attempts: this is the hottest insert path, and the
// server only accepts chunks from the worker holding the attempt's lease.

import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import type { LogStreamName } from "../../../domain.ts";

export const LOG_STREAMS = ["stdout", "stderr", "system"] as const satisfies readonly LogStreamName[];

export const LogChunkEntity = defineEntity({
  name: "LogChunk",
  tableName: "log_chunks",
  properties: {
    jobId: p.uuid().primary(),
    attempt: p.integer().primary(),
    seq: p.integer().primary(),
    stream: p.enum(LOG_STREAMS),
    data: p.blob(),
    time: p.datetime(),
  },
  primaryKeys: ["jobId", "attempt", "seq"],
});

export type LogChunkRow = InferEntity<typeof LogChunkEntity>;
