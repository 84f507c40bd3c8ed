// S5: 20 MB/s of live logs with a follower per job. See BENCHMARKS.md.
import { main } from "./lib/runner.ts";
import { s5 } from "./scenarios/s5-logs.ts";

await main([s5]);
