// Resolving a step's pool (DESIGN, "Resolving a step's pool"). Pure: the
// caller loads the pools and the target; this decides.

import type { PoolRule } from "../domain.ts";

export interface PoolRef {
  id: string;
  name: string;
}

export interface TargetRef {
  id: string;
  name: string;
  /** The target's default pool, if it names one. */
  defaultPool: PoolRef | null;
}

export interface PoolResolutionInput {
  /** The space's default pool. */
  spaceDefault: PoolRef;
  /** The pool the step named, already loaded; null when it named none. */
  requested: PoolRef | null;
  /** The cloud target the step deploys to, if any. */
  target: TargetRef | null;
}

export interface PoolResolution {
  pool: PoolRef;
  rule: PoolRule;
  reason: string;
}

export function resolvePool({ spaceDefault, requested, target }: PoolResolutionInput): PoolResolution {
  if (requested !== null && requested.id !== spaceDefault.id) {
    return {
      pool: requested,
      rule: "explicit",
      reason: `the job named pool ${requested.name}`,
    };
  }
  const named = requested === null ? "the job named no pool" : `the job named the default pool ${spaceDefault.name}`;
  if (target !== null && target.defaultPool !== null) {
    return {
      pool: target.defaultPool,
      rule: "target_default",
      reason: `${named} and its target ${target.name} has default pool ${target.defaultPool.name}`,
    };
  }
  const why = target === null ? "" : ` and its target ${target.name} has no default pool`;
  return {
    pool: spaceDefault,
    rule: "space_default",
    reason: `${named}${why}: the space's default pool ${spaceDefault.name}`,
  };
}
