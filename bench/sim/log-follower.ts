// Live log followers: submits the S5 jobs, then follows each one's log with
// GetJobLogs(follow) from its own HTTP/2 client, as a user's terminal would.
// Every line carries the simulated agent's stamp of when it was written; the
// follower measures line-to-follower delay on the first (oldest) line of each
// chunk, checks that sequence numbers are contiguous, and counts bytes.

import { performance } from "node:perf_hooks";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService } from "../../gen/muster/v1/job_pb.js";
import { serveCommands } from "../lib/ipc-child.ts";
import { percentile } from "../lib/stats.ts";

const now = () => performance.timeOrigin + performance.now();

serveCommands({
  async run(args: { api: string; poolId: string; jobs: number }) {
    const jobs = createClient(JobService, createGrpcTransport({ baseUrl: `http://${args.api}` }));
    const ids: string[] = [];
    for (let i = 0; i < args.jobs; i++) {
      const response = await jobs.submitJob({ name: `log-${i}`, workerPoolId: args.poolId, script: "true" });
      ids.push(response.job!.id);
    }
    const delays: number[] = [];
    let bytes = 0;
    let lines = 0;
    let chunks = 0;
    let gaps = 0;
    await Promise.all(
      ids.map(async (jobId) => {
        let expected = 1n;
        for await (const response of jobs.getJobLogs({ jobId, fromSeq: 0n, follow: true })) {
          const chunk = response.chunk!;
          if (chunk.seq !== expected) gaps++;
          expected = chunk.seq + 1n;
          chunks++;
          bytes += chunk.data.byteLength;
          const text = Buffer.from(chunk.data.buffer, chunk.data.byteOffset, chunk.data.byteLength);
          let count = 0;
          for (let i = text.indexOf(10); i !== -1; i = text.indexOf(10, i + 1)) count++;
          lines += count;
          const stamp = Number(text.subarray(0, text.indexOf(32)).toString());
          if (Number.isFinite(stamp)) delays.push(now() - stamp);
        }
      }),
    );
    delays.sort((a, b) => a - b);
    return { ids, bytes, lines, chunks, gaps, p50Ms: percentile(delays, 50), p99Ms: percentile(delays, 99), maxMs: delays[delays.length - 1] ?? Number.NaN };
  },
});
