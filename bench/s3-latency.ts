// S3: submit-to-start latency in an open loop at 100, 500 and 2,000 jobs/s. See BENCHMARKS.md.
import { main } from "./lib/runner.ts";
import { s3 } from "./scenarios/s3-latency.ts";

await main([s3]);
