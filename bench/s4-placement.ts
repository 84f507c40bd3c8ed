// S4: placement decisions on the Redis lease store at 1,000 to 100,000 leases. See BENCHMARKS.md.
import { main } from "./lib/runner.ts";
import { s4 } from "./scenarios/s4-placement.ts";

await main([s4]);
