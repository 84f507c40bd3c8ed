// grpc.health.v1.Health for both planes. One HealthStatus is shared by the
// API plane (connect-node) and the agent plane (grpc-js, through the adapter);
// the composition root owns it and sets statuses as the process starts,
// becomes ready and drains. All status state is owned by the HealthStatus
// object; the service below only reads it.

import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus,
  type HealthCheckRequest,
} from "../../gen/health/v1/health_pb.js";

/** "SERVICE_UNKNOWN" forgets the service: Check answers NOT_FOUND, Watch reports SERVICE_UNKNOWN. */
export type ServingStatus = "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/** The overall status of the server, by gRPC convention. */
export const OVERALL = "";

type Listener = (status: ServingStatus) => void;

export interface HealthStatus {
  set(service: string, status: ServingStatus): void;
  get(service: string): ServingStatus;
  /** Every known service (including "" once set) with its status. */
  list(): Map<string, ServingStatus>;
  /** Calls listener on every change of service's status; returns the unsubscribe function. */
  watch(service: string, listener: Listener): () => void;
  /** Marks every known service NOT_SERVING and ignores later set() calls, as gRPC servers do on shutdown. */
  shutdown(): void;
}

export function createHealthStatus(initial: Record<string, ServingStatus> = { [OVERALL]: "SERVING" }): HealthStatus {
  const statuses = new Map<string, ServingStatus>();
  const listeners = new Map<string, Set<Listener>>();
  let shuttingDown = false;

  function apply(service: string, status: ServingStatus): void {
    if ((statuses.get(service) ?? "SERVICE_UNKNOWN") === status) return;
    if (status === "SERVICE_UNKNOWN") statuses.delete(service);
    else statuses.set(service, status);
    for (const listener of listeners.get(service) ?? []) listener(status);
  }

  for (const [service, status] of Object.entries(initial)) apply(service, status);

  return {
    set(service, status) {
      if (!shuttingDown) apply(service, status);
    },
    get(service) {
      return statuses.get(service) ?? "SERVICE_UNKNOWN";
    },
    list() {
      return new Map(statuses);
    },
    watch(service, listener) {
      let set = listeners.get(service);
      if (!set) listeners.set(service, (set = new Set()));
      set.add(listener);
      return () => {
        set.delete(listener);
        if (set.size === 0) listeners.delete(service);
      };
    },
    shutdown() {
      shuttingDown = true;
      for (const service of [...statuses.keys()]) apply(service, "NOT_SERVING");
    },
  };
}

const WIRE_STATUS: Record<ServingStatus, HealthCheckResponse_ServingStatus> = {
  SERVING: HealthCheckResponse_ServingStatus.SERVING,
  NOT_SERVING: HealthCheckResponse_ServingStatus.NOT_SERVING,
  SERVICE_UNKNOWN: HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN,
};

/** The Health service over a HealthStatus, for a ConnectRouter or the grpc-js adapter. */
export function healthService(health: HealthStatus): ServiceImpl<typeof Health> {
  return {
    check(request: HealthCheckRequest) {
      const status = health.get(request.service);
      if (status === "SERVICE_UNKNOWN") {
        throw new ConnectError(`unknown service "${request.service}"`, Code.NotFound);
      }
      return { status: WIRE_STATUS[status] };
    },

    async *watch(request: HealthCheckRequest, context: HandlerContext) {
      // Changes arrive through the listener while the consumer may be slow;
      // only the latest status matters, so one slot is enough.
      let pending: ServingStatus | undefined;
      let wake: (() => void) | undefined;
      const notify = () => {
        wake?.();
        wake = undefined;
      };
      const unsubscribe = health.watch(request.service, (status) => {
        pending = status;
        notify();
      });
      context.signal.addEventListener("abort", notify);
      try {
        let sent = health.get(request.service);
        yield { status: WIRE_STATUS[sent] };
        while (!context.signal.aborted) {
          if (pending === undefined) {
            await new Promise<void>((resolve) => (wake = resolve));
            continue;
          }
          const next: ServingStatus = pending;
          pending = undefined;
          if (next === sent) continue;
          sent = next;
          yield { status: WIRE_STATUS[next] };
        }
      } finally {
        unsubscribe();
        context.signal.removeEventListener("abort", notify);
      }
    },

    list() {
      const statuses: Record<string, { status: HealthCheckResponse_ServingStatus }> = {};
      for (const [service, status] of health.list()) statuses[service] = { status: WIRE_STATUS[status] };
      return { statuses };
    },
  };
}
