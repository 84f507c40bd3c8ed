// Reads a job attempt's log from any sequence number, and follows it live.
//
// A follower subscribes to the job's log channel and to its state changes
// before it reads Postgres, so nothing falls between the two. Chunks are sent
// strictly in seq order, each once: a live chunk is sent when it continues
// the sequence, one already sent is dropped, and one beyond a hole waits in
// the buffer while the hole is read from Postgres. (What Postgres holds is
// sent as it is: agent sessions store an attempt's chunks contiguously.)
//
// Live chunks are published as soon as the agent session has received and
// validated them, in parallel with storing them (agent-session.ts), so a
// follower may hear a chunk before Postgres holds it, and the chunks
// published just before it subscribed may not be stored yet when it reads
// the store. Such a hole is read again, HOLE_RETRY_FIRST_MS later and then
// at doubling intervals, until it is stored (a moment later), the job ends
// or the attempt changes; the live chunks after it are kept meanwhile.
//
// What a follower saw live is what the store ends up with, with one
// exception. The agent resends every chunk the server has not acknowledged
// (acknowledgements follow storage) with the same seq and bytes, sequence
// numbers are per (job, attempt), and the store keeps the first copy of a
// seq: so a chunk a follower got live is stored, unless the attempt ends
// first as lost (the agent died with it unacknowledged, or its lease
// expired); then the live follower saw up to a few flush intervals of
// output that a later reader of the attempt will not find. The lost attempt
// is reported as such, and the job's next attempt has its own log. (Also:
// a chunk one replica published and another, with a lower max chunk size,
// then refuses makes the agent re-cut it under the same seq numbers; replicas
// should share one MUSTER_MAX_CHUNK_BYTES.)
//
// A follower that lets more than MAX_BUFFERED_CHUNKS or MAX_BUFFERED_BYTES
// pile up drops the buffer and reads on from Postgres, PAGE chunks at a
// time. Memory per follower is therefore bounded, and a slow follower never
// holds back ingest or other followers.
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
/** A hole not yet stored is looked for again after this, doubling up to HOLE_RETRY_MAX_MS. */
const HOLE_RETRY_FIRST_MS = 25;
const HOLE_RETRY_MAX_MS = 1000;

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
  /** Chunks heard on the channel and not yet sent, in arrival order. */
  let live: LogChunkRecord[] = [];
  let liveBytes = 0;
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
            if (live.length >= MAX_BUFFERED_CHUNKS || liveBytes + chunk.data.byteLength > MAX_BUFFERED_BYTES) {
              live = [];
              liveBytes = 0;
              overflowed = true;
              break;
            }
            live.push(chunk);
            liveBytes += chunk.data.byteLength;
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

    /** What is stored from `next` on, up to seq `upTo` at most. */
    const drainStored = async function* (upTo = Number.POSITIVE_INFINITY): AsyncGenerator<LogChunkRecord> {
      while (next <= upTo) {
        const limit = Math.min(PAGE, upTo - next + 1);
        const page = await db.logs.read(jobId, attempt, next, limit);
        for (const chunk of page) {
          yield chunk;
          next = chunk.seq + 1;
        }
        if (page.length < limit) return;
      }
    };

    /**
     * Sends the live chunks that continue the sequence and drops the stale
     * ones (sent already, or of another attempt). Returns the seq of the
     * first live chunk beyond a hole, or 0 when none is left.
     */
    const takeLive = function* (): Generator<LogChunkRecord, number> {
      for (;;) {
        if (overflowed) return 0;
        let lowest = -1;
        for (let i = 0; i < live.length; ) {
          const chunk = live[i];
          if (chunk.attempt !== attempt || chunk.seq < next) {
            live.splice(i, 1);
            liveBytes -= chunk.data.byteLength;
            continue;
          }
          if (lowest === -1 || chunk.seq < live[lowest].seq) lowest = i;
          i++;
        }
        if (lowest === -1) return 0;
        const chunk = live[lowest];
        if (chunk.seq > next) return chunk.seq;
        live.splice(lowest, 1);
        liveBytes -= chunk.data.byteLength;
        yield chunk;
        next = chunk.seq + 1;
      }
    };

    yield* drainStored();
    if (!options.follow) return;

    // Whether the job ended while its stored log was read is known only after a look.
    changed = true;
    let quietSince = Date.now();
    let holeRetryMs = 0;
    let holeRetryAt = 0;
    for (;;) {
      if (signal.aborted) return;
      signalled = false;
      if (overflowed) {
        overflowed = false;
        live = [];
        liveBytes = 0;
        yield* drainStored();
      }
      const hole = yield* takeLive();
      if (hole === 0) {
        holeRetryMs = 0;
      } else if (Date.now() >= holeRetryAt) {
        // The chunks before the first one heard were published before this
        // follower listened (or their message was lost): they come from
        // Postgres, once stored. The live chunks after them stay buffered.
        yield* drainStored(hole - 1);
        if (next >= hole) {
          holeRetryMs = 0;
          continue;
        }
        holeRetryMs = holeRetryMs === 0 ? HOLE_RETRY_FIRST_MS : Math.min(holeRetryMs * 2, HOLE_RETRY_MAX_MS);
        holeRetryAt = Date.now() + holeRetryMs;
      }
      const quiet = Date.now() - quietSince >= RECHECK_MS;
      if (changed || quiet) {
        changed = false;
        job = await db.jobs.get(jobId);
        if (job === null) return;
        if (TERMINAL_JOB_STATES.has(job.state) || job.attempt !== attempt) {
          // The attempt is over: whatever it stored is final. (A finish is
          // acknowledged only once every chunk is stored; an attempt that was
          // lost ends with what was stored, even if more was sent live.)
          yield* drainStored();
          return;
        }
        if (quiet) {
          yield* drainStored();
          quietSince = Date.now();
        }
      }
      if (signalled || overflowed) {
        quietSince = Date.now();
        continue;
      }
      const waitMs = hole !== 0 ? Math.max(0, holeRetryAt - Date.now()) : live.length === 0 ? RECHECK_MS : 0;
      if (waitMs === 0) continue;
      const heard = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => {
          wake = null;
          resolve(false);
        }, waitMs);
        wake = () => {
          clearTimeout(timer);
          resolve(true);
        };
      });
      quietSince = heard ? Date.now() : quietSince;
    }
  } finally {
    for (const unsubscribe of unsubscribes) await unsubscribe().catch(() => {});
  }
}
