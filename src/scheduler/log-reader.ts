// Reads a job attempt's log from any sequence number, and follows it live.
//
// A follower subscribes to the job's log channel before it reads Postgres,
// so nothing falls between the two. Live chunks are used directly while they
// continue the sequence; a gap, or a follower that lets more than
// MAX_BUFFERED_CHUNKS pile up, drops the buffer and reads the rest from
// Postgres. Memory per follower is therefore bounded, and a slow follower
// never holds back ingest or other followers.

import { TERMINAL_JOB_STATES, type LogChunkRecord } from "../domain.ts";
import type { Database } from "../stores/database.ts";
import type { JobEvents } from "./job-events.ts";

const PAGE = 500;
const MAX_BUFFERED_CHUNKS = 256;

export interface ReadLogsOptions {
  jobId: string;
  /** 0: the job's current attempt. */
  attempt: number;
  fromSeq: number;
  follow: boolean;
  signal: AbortSignal;
}

export async function* readLogs(db: Database, events: JobEvents, options: ReadLogsOptions): AsyncGenerator<LogChunkRecord> {
  const { jobId, signal } = options;
  let buffer: LogChunkRecord[] = [];
  let overflowed = false;
  // `signalled` closes the window between reading the job and going to sleep:
  // an event in that window makes the loop go round again instead of waiting.
  let signalled = false;
  let wake: (() => void) | null = null;
  const notify = () => {
    signalled = true;
    const w = wake;
    wake = null;
    w?.();
  };
  const unsubscribes: Array<() => Promise<void>> = [];
  let attempt = options.attempt;
  try {
    if (options.follow) {
      unsubscribes.push(
        await events.onLogs(jobId, (chunks) => {
          for (const chunk of chunks) {
            if (buffer.length >= MAX_BUFFERED_CHUNKS) {
              buffer = [];
              overflowed = true;
              break;
            }
            buffer.push(chunk);
          }
          notify();
        }),
        await events.onChange(jobId, notify),
      );
      signal.addEventListener("abort", notify, { once: true });
    }
    let job = await db.jobs.get(jobId);
    if (job === null) return;
    if (attempt === 0) attempt = Math.max(job.attempt, 1);
    let next = Math.max(options.fromSeq, 1);

    // Everything stored so far.
    const drainStored = async function* (): AsyncGenerator<LogChunkRecord> {
      for (;;) {
        const page = await db.logs.read(jobId, attempt, next, PAGE);
        for (const chunk of page) {
          yield chunk;
          next = chunk.seq + 1;
        }
        if (page.length < PAGE) return;
      }
    };

    yield* drainStored();
    if (!options.follow) return;

    for (;;) {
      if (signal.aborted) return;
      signalled = false;
      if (overflowed) {
        overflowed = false;
        buffer = [];
        yield* drainStored();
      }
      let gap = false;
      while (buffer.length > 0 && !overflowed) {
        const chunk = buffer.shift()!;
        if (chunk.attempt !== attempt || chunk.seq < next) continue;
        if (chunk.seq > next) {
          gap = true;
          break;
        }
        yield chunk;
        next = chunk.seq + 1;
      }
      if (gap) {
        buffer = [];
        yield* drainStored();
        continue;
      }
      job = await db.jobs.get(jobId);
      if (job === null) return;
      if (TERMINAL_JOB_STATES.has(job.state) || job.attempt !== attempt) {
        // The attempt is over: whatever it persisted is final.
        yield* drainStored();
        return;
      }
      if (!signalled && buffer.length === 0 && !overflowed) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    }
  } finally {
    for (const unsubscribe of unsubscribes) await unsubscribe().catch(() => {});
  }
}
