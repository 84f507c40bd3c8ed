// Messages routed through the lease store to the replica that holds a
// worker's stream (LeaseStore.deliver). JSON, because the store treats the
// payload as opaque text; the agent plane turns them into ConnectResponse
// messages on the right session.

export interface AssignMessage {
  type: "assign";
  jobId: string;
  attempt: number;
  name: string;
  script: string;
  env: Record<string, string>;
  timeoutMs: number | null;
  runId: string;
}

export interface CancelMessage {
  type: "cancel";
  jobId: string;
  attempt: number;
  graceMs: number;
}

export interface LeaseLostMessage {
  type: "lease_lost";
  jobId: string;
  attempt: number;
  reason: string;
}

/** Close the worker's stream (credential revoked, worker deleted, stream deaf). */
export interface DisconnectMessage {
  type: "disconnect";
  reason: string;
  /** gRPC status code to end the stream with. */
  code: number;
}

export interface DrainMessage {
  type: "drain";
  exitWhenIdle: boolean;
}

export type WorkerMessage = AssignMessage | CancelMessage | LeaseLostMessage | DisconnectMessage | DrainMessage;

export function encodeWorkerMessage(message: WorkerMessage): string {
  return JSON.stringify(message);
}

export function decodeWorkerMessage(payload: string): WorkerMessage {
  return JSON.parse(payload) as WorkerMessage;
}
