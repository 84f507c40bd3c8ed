// Every entity of the Postgres store, in the order MikroORM should discover them.

import { JobAttemptEntity } from "./job-attempt.ts";
import { JobEntity } from "./job.ts";
import { LogChunkEntity } from "./log-chunk.ts";
import { RegistrationTokenEntity } from "./registration-token.ts";
import { SpaceEntity } from "./space.ts";
import { TargetEntity } from "./target.ts";
import { WorkerPoolEntity } from "./worker-pool.ts";
import { WorkerEntity } from "./worker.ts";

export const entities = [
  SpaceEntity,
  WorkerPoolEntity,
  RegistrationTokenEntity,
  TargetEntity,
  WorkerEntity,
  JobEntity,
  JobAttemptEntity,
  LogChunkEntity,
];
