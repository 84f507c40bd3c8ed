// Live log followers: submits the S5 jobs and follows each one's log with
// GetJobLogs(follow) from its own HTTP/2 client, as a user's terminal would.
// Every line carries the simulated agent's stamp of when it was written; the
// follower measures line-to-follower delay on the first (oldest) line of each
// chunk, checks that sequence numbers are contiguous, and counts bytes.
//
// The jobs are submitted together and each job's follow is opened as soon
// as its submit returns: a job starts writing the moment it is assigned, and
// follows opened only after twenty submits one after another (as this
// harness once did) began up to a second into the run, so the first second
// of every job's output reached them as stored history, not live, and was
// counted as live delay; the jobs' starts were also spread over that second,
// which the ingest lag (first line to last finish) counted as lag. What is
// measured is unchanged: every chunk's oldest line, from its write to its
// receipt.
//
// S5_TRACE=<path>: also writes `<path>.follower`, one line per chunk: job id
// (first 8 characters), seq, write stamp, receipt stamp (ms, shared clock);
// and one line per job when its follow was opened: job id, "open", "-", stamp.

import { writeFileSync } from "node:fs";
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
    const delays: number[] = [];
    const trace: string[] | null = process.env.S5_TRACE ? [] : null;
    let bytes = 0;
    let lines = 0;
    let chunks = 0;
    let gaps = 0;
    const follow = async (jobId: string) => {
      let expected = 1n;
      for await (const response of jobs.getJobLogs({ jobId, fromSeq: 0n, follow: true })) {
        const receivedAt = now();
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
        if (Number.isFinite(stamp)) {
          delays.push(receivedAt - stamp);
          trace?.push(`${jobId.slice(0, 8)} ${chunk.seq} ${stamp.toFixed(1)} ${receivedAt.toFixed(1)}`);
        }
      }
    };
    const following: Array<Promise<void>> = [];
    await Promise.all(
      Array.from({ length: args.jobs }, async (_, i) => {
        const response = await jobs.submitJob({ name: `log-${i}`, workerPoolId: args.poolId, script: "true" });
        const jobId = response.job!.id;
        ids[i] = jobId;
        trace?.push(`${jobId.slice(0, 8)} open - ${now().toFixed(1)}`);
        following.push(follow(jobId));
      }),
    );
    await Promise.all(following);
    if (trace !== null) writeFileSync(`${process.env.S5_TRACE}.follower`, trace.join("\n") + "\n");
    delays.sort((a, b) => a - b);
    return { ids, bytes, lines, chunks, gaps, p50Ms: percentile(delays, 50), p99Ms: percentile(delays, 99), maxMs: delays[delays.length - 1] ?? Number.NaN };
  },
});
