// Delivery to a worker whose stream this replica holds skips Redis: the
// message goes straight to the session, with no round trip to the store and
// no pub/sub message back to this same process. Only a worker held by no
// session here goes through LeaseStore.deliver, which finds the replica that
// holds it.
//
// The local registry can be a moment behind the store: a worker that has just
// reconnected to another replica may still have its old session here until
// that stream's end is noticed (or its next heartbeat is refused). A message
// delivered to that old session is lost with it, which is the case delivery
// through Redis already has when a stream dies just after the PUBLISH: an
// assignment is placed again after the assignment timeout, a cancel is
// answered by the attempt's own end.

import type { SessionRegistry } from "../agent-plane/session-registry.ts";
import type { LeaseStore } from "../stores/lease-store.ts";
import { decodeWorkerMessage } from "./worker-messages.ts";

export function withLocalDelivery(store: LeaseStore, registry: Pick<SessionRegistry, "get">): LeaseStore {
  return {
    ...store,
    async deliver(delivery) {
      const session = registry.get(delivery.workerId);
      if (session === undefined) return store.deliver(delivery);
      session.deliver(decodeWorkerMessage(delivery.payload));
      return true;
    },
  };
}
