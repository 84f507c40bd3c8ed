import { createMemoryLeaseStore } from "../../src/stores/memory/memory-lease-store.ts";
import { leaseStoreContract } from "./lease-store.contract.ts";

leaseStoreContract("memory", async () => {
  const store = createMemoryLeaseStore();
  await store.start();
  return { store, cleanup: () => store.close() };
});
