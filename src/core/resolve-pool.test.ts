import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { resolvePool } from "./resolve-pool.ts";

const deflt = { id: "p-default", name: "default" };
const linux = { id: "p-linux", name: "linux" };
const azure = { id: "p-azure", name: "azure" };
const aks = { id: "t-aks", name: "aks-prod", defaultPool: azure };
const bare = { id: "t-vm", name: "vm", defaultPool: null };

const cases = [
  { name: "no pool, no target: the space default", requested: null, target: null, pool: deflt, rule: "space_default" },
  { name: "explicit other pool", requested: linux, target: null, pool: linux, rule: "explicit" },
  { name: "explicit default pool, no target: the space default", requested: deflt, target: null, pool: deflt, rule: "space_default" },
  { name: "no pool, target with a default pool: the target's pool", requested: null, target: aks, pool: azure, rule: "target_default" },
  { name: "explicit default pool + target with its own default: the target's pool", requested: deflt, target: aks, pool: azure, rule: "target_default" },
  { name: "explicit other pool + target: the explicit pool", requested: linux, target: aks, pool: linux, rule: "explicit" },
  { name: "no pool, target without a default pool: the space default", requested: null, target: bare, pool: deflt, rule: "space_default" },
] as const;

describe("resolvePool", () => {
  for (const c of cases) {
    test(c.name, () => {
      const resolution = resolvePool({ spaceDefault: deflt, requested: c.requested, target: c.target });
      assert.equal(resolution.pool.id, c.pool.id);
      assert.equal(resolution.rule, c.rule);
      assert.match(resolution.reason, new RegExp(c.pool.name));
    });
  }
});
