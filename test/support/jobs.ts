// A job as a submission makes it, for tests that write jobs straight into a
// repository: a no-op script with nothing special about it. Tests change
// only what they are about.

import { randomUUID } from "node:crypto";
import type { NewJob } from "../../src/stores/database.ts";

export function plainJob(overrides: Partial<NewJob> = {}): NewJob {
  return {
    id: randomUUID(),
    space: "default",
    name: "job",
    script: "true",
    env: {},
    requestedPoolId: null,
    targetId: null,
    runId: "",
    requiredLabels: [],
    priority: 0,
    exclusive: false,
    timeoutMs: null,
    queueTimeoutMs: null,
    maxAttempts: 1,
    resolvedPoolId: null,
    poolRule: "space_default",
    poolReason: "",
    queueDeadline: null,
    createdAt: new Date(),
    ...overrides,
  };
}
