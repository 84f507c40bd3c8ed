// Cross-replica notifications about jobs, carried by the lease store's
// fan-out channels. Payloads are small and carry no secrets: watchers re-read
// the job from Postgres, log followers get the chunk itself so a live follow
// needs no query while it keeps up.

import type { LogChunkRecord, LogStreamName } from "../domain.ts";
import type { LeaseStore, Unsubscribe } from "../stores/lease-store.ts";

export function jobChannel(jobId: string): string {
  return `job:${jobId}`;
}

export function logChannel(jobId: string): string {
  return `logs:${jobId}`;
}

interface WireChunk {
  a: number;
  s: number;
  k: LogStreamName;
  d: string;
  t: number;
}

export interface JobEvents {
  /** The job changed (state, attempt, placement). */
  changed(jobId: string, state: string): Promise<void>;
  onChange(jobId: string, handler: (state: string) => void): Promise<Unsubscribe>;
  logs(jobId: string, chunks: LogChunkRecord[]): Promise<void>;
  onLogs(jobId: string, handler: (chunks: LogChunkRecord[]) => void): Promise<Unsubscribe>;
}

export function createJobEvents(store: LeaseStore): JobEvents {
  return {
    changed: (jobId, state) => store.publish(jobChannel(jobId), state),
    onChange: (jobId, handler) => store.subscribe(jobChannel(jobId), handler),
    logs(jobId, chunks) {
      const wire: WireChunk[] = chunks.map((c) => ({
        a: c.attempt,
        s: c.seq,
        k: c.stream,
        d: Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength).toString("base64"),
        t: c.time.getTime(),
      }));
      return store.publish(logChannel(jobId), JSON.stringify(wire));
    },
    onLogs: (jobId, handler) =>
      store.subscribe(logChannel(jobId), (payload) => {
        const wire = JSON.parse(payload) as WireChunk[];
        handler(
          wire.map((w) => ({
            jobId,
            attempt: w.a,
            seq: w.s,
            stream: w.k,
            data: new Uint8Array(Buffer.from(w.d, "base64")),
            time: new Date(w.t),
          })),
        );
      }),
  };
}
