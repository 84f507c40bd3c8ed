// S6: server restart with 1,000 connected agents running jobs. See BENCHMARKS.md.
import { main } from "./lib/runner.ts";
import { s6 } from "./scenarios/s6-restart.ts";

await main([s6]);
