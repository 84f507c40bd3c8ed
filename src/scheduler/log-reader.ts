// Reads a job attempt's log from any sequence number, and follows it live.
//
// A follower subscribes to the job's log channel and to its state changes
// before it reads Postgres, so nothing falls between the two. Live chunks are
// used directly while they continue the sequence; a gap, or a follower that
// lets more than MAX_BUFFERED_CHUNKS or MAX_BUFFERED_BYTES pile up, drops the
// buffer and reads the rest from Postgres, PAGE chunks at a time. Memory per
// follower is therefore bounded, and a slow follower never holds back ingest
// or other followers.
//
// While chunks flow, the job is re-read only when a state change was
// announced, not once per chunk. Pub/sub delivers at most once, so a
// follower that has heard nothing for RECHECK_MS also re-reads the job and
// whatever Postgres holds beyond what it sent: a lost announcement or lost
// chunks delay the follower, they do not stall it.

import { TERMINAL_JOB_STATES, type LogChunkRecord } from "../domain.ts";
import type { Database } from "../stores/database.ts";
import type { JobEvents } from "./job-events.ts";

const PAGE = 64;
const MAX_BUFFERED_CHUNKS = 256;
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;
const RECHECK_MS = 5000;

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
  let bufferedBytes = 0;
  let overflowed = false;
  /** A state change was announced since the job was last read. */
  let changed = false;
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
            if (buffer.length >= MAX_BUFFERED_CHUNKS || bufferedBytes + chunk.data.byteLength > MAX_BUFFERED_BYTES) {
              buffer = [];
              bufferedBytes = 0;
              overflowed = true;
              break;
            }
            buffer.push(chunk);
            bufferedBytes += chunk.data.byteLength;
          }
          notify();
        }),
        await events.onChange(jobId, () => {
          changed = true;
          notify();
        }),
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

    // Whether the job ended while its stored log was read is known only after a look.
    changed = true;
    let quietSince = Date.now();
    for (;;) {
      if (signal.aborted) return;
      signalled = false;
      if (overflowed) {
        overflowed = false;
        buffer = [];
        bufferedBytes = 0;
        yield* drainStored();
      }
      let gap = false;
      while (buffer.length > 0 && !overflowed) {
        const chunk = buffer.shift()!;
        bufferedBytes -= chunk.data.byteLength;
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
        bufferedBytes = 0;
        yield* drainStored();
        continue;
      }
      const quiet = Date.now() - quietSince >= RECHECK_MS;
      if (changed || quiet) {
        changed = false;
        job = await db.jobs.get(jobId);
        if (job === null) return;
        if (TERMINAL_JOB_STATES.has(job.state) || job.attempt !== attempt) {
          // The attempt is over: whatever it persisted is final.
          yield* drainStored();
          return;
        }
        if (quiet) {
          yield* drainStored();
          quietSince = Date.now();
        }
      }
      if (!signalled && buffer.length === 0 && !overflowed) {
        const heard = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => {
            wake = null;
            resolve(false);
          }, RECHECK_MS);
          wake = () => {
            clearTimeout(timer);
            resolve(true);
          };
        });
        quietSince = heard ? Date.now() : quietSince;
      } else {
        quietSince = Date.now();
      }
    }
  } finally {
    for (const unsubscribe of unsubscribes) await unsubscribe().catch(() => {});
  }
}
