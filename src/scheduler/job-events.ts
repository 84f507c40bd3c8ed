// Cross-replica notifications about jobs, carried by the lease store's
// fan-out channels. Payloads carry no secrets: watchers re-read the job from
// Postgres; log followers get the chunks themselves, in binary (log-wire.ts),
// so a live follow needs no query while it keeps up.
//
// State changes of all jobs share one channel, and the changes made in one
// turn of the event loop go out as one message: a replica placing and
// finishing hundreds of jobs a second publishes a few batches, not three
// messages per job. Each replica subscribes to that channel once, on its
// first watcher, and hands every change to the local watchers of that job.

import type { LogChunkRecord } from "../domain.ts";
import type { LeaseStore, Unsubscribe } from "../stores/lease-store.ts";
import { decodeLogChunks, encodeLogChunks } from "./log-wire.ts";

/** The channel that carries every job's state changes, in batches. */
export const JOB_CHANGES_CHANNEL = "job-changes";

export function logChannel(jobId: string): string {
  return `logs:${jobId}`;
}

export interface JobEvents {
  /** The job changed (state, attempt, placement). */
  changed(jobId: string, state: string): Promise<void>;
  onChange(jobId: string, handler: (state: string) => void): Promise<Unsubscribe>;
  logs(jobId: string, chunks: LogChunkRecord[]): Promise<void>;
  onLogs(jobId: string, handler: (chunks: LogChunkRecord[]) => void): Promise<Unsubscribe>;
}

/** A batch on JOB_CHANGES_CHANNEL: [jobId, state] pairs in the order they happened. */
type WireChanges = Array<[string, string]>;

export function createJobEvents(store: LeaseStore): JobEvents {
  // Outgoing: changes of this turn, published together on the next one.
  let pending: WireChanges = [];
  let flushing: Promise<void> | null = null;
  const flush = (): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        const batch = pending;
        pending = [];
        flushing = null;
        store.publish(JOB_CHANGES_CHANNEL, JSON.stringify(batch)).then(resolve, reject);
      });
    });

  // Incoming: this replica's watchers by job; one subscription for all of them.
  const watchers = new Map<string, Set<(state: string) => void>>();
  let subscribed: Promise<unknown> | null = null;
  const dispatch = (payload: string) => {
    // One watcher that throws must not cost the others their changes; the
    // first error goes on to the subscriber, which logs it.
    let failure: { error: unknown } | undefined;
    for (const [jobId, state] of JSON.parse(payload) as WireChanges) {
      for (const handler of watchers.get(jobId) ?? []) {
        try {
          handler(state);
        } catch (error) {
          failure ??= { error };
        }
      }
    }
    if (failure !== undefined) throw failure.error;
  };

  return {
    changed(jobId, state) {
      pending.push([jobId, state]);
      flushing ??= flush();
      return flushing;
    },
    async onChange(jobId, handler) {
      subscribed ??= store.subscribe(JOB_CHANGES_CHANNEL, dispatch).catch((error: unknown) => {
        subscribed = null; // the next watcher tries again
        throw error;
      });
      await subscribed;
      // A wrapper per call, so the same function registered twice needs two unsubscribes.
      const listener = (state: string) => handler(state);
      let set = watchers.get(jobId);
      if (set === undefined) watchers.set(jobId, (set = new Set()));
      set.add(listener);
      return async () => {
        const current = watchers.get(jobId);
        if (current?.delete(listener) && current.size === 0) watchers.delete(jobId);
      };
    },
    logs: (jobId, chunks) => store.publishBytes(logChannel(jobId), encodeLogChunks(chunks)),
    onLogs: (jobId, handler) => store.subscribeBytes(logChannel(jobId), (payload) => handler(decodeLogChunks(jobId, payload))),
  };
}
