// S1: 1,000 connected idle agents. See BENCHMARKS.md.
import { main } from "./lib/runner.ts";
import { s1 } from "./scenarios/s1-idle-agents.ts";

await main([s1]);
