// The agent sessions held by this replica. All of this replica's session
// bookkeeping is owned here: sessions are keyed by worker id and carry their
// session id, so the cleanup of a stale stream can never evict the fresh
// reconnect that replaced it.

import type { WorkerMessage } from "../scheduler/worker-messages.ts";

export interface SessionHandle {
  readonly workerId: string;
  readonly sessionId: string;
  /** Acts on a message routed to this worker (assignment, cancel, ...). */
  deliver(message: WorkerMessage): void;
  /** Ends the stream with a gRPC status. */
  end(code: number, reason: string): void;
}

export interface SessionRegistry {
  /** Registers a session; returns the one it replaced, if any. */
  add(session: SessionHandle): SessionHandle | undefined;
  /** Removes the session only if it is still the current one for its worker. */
  remove(session: SessionHandle): boolean;
  get(workerId: string): SessionHandle | undefined;
  readonly size: number;
  all(): SessionHandle[];
}

export function createSessionRegistry(): SessionRegistry {
  const sessions = new Map<string, SessionHandle>();
  return {
    add(session) {
      const previous = sessions.get(session.workerId);
      sessions.set(session.workerId, session);
      return previous?.sessionId === session.sessionId ? undefined : previous;
    },
    remove(session) {
      const current = sessions.get(session.workerId);
      if (current !== session) return false;
      sessions.delete(session.workerId);
      return true;
    },
    get: (workerId) => sessions.get(workerId),
    get size() {
      return sessions.size;
    },
    all: () => [...sessions.values()],
  };
}
