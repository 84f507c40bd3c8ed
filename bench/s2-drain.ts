// S2: drain 10,000 no-op jobs over 50 workers x 4 slots. See BENCHMARKS.md.
import { main } from "./lib/runner.ts";
import { s2 } from "./scenarios/s2-drain.ts";

await main([s2]);
