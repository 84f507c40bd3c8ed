// Every scenario, in the order S1..S6: `npm run bench` (flags: see lib/runner.ts).
import { main } from "./lib/runner.ts";
import { s1 } from "./scenarios/s1-idle-agents.ts";
import { s2 } from "./scenarios/s2-drain.ts";
import { s3 } from "./scenarios/s3-latency.ts";
import { s4 } from "./scenarios/s4-placement.ts";
import { s5 } from "./scenarios/s5-logs.ts";
import { s6 } from "./scenarios/s6-restart.ts";

await main([s1, s2, s3, s4, s5, s6]);
