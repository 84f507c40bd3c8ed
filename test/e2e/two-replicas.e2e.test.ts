// End to end with two server replicas on one Postgres schema and one Redis
// key prefix: two agents connected to each replica, jobs submitted to both at
// once. Any replica places any job on any worker (DESIGN "Processes and
// planes"), so a job submitted on A must reach agents connected to B; every
// job runs exactly once, its log reads the same from either replica, no
// worker ever holds more leases than its capacity, and WatchJob on B follows
// a job submitted on A to its end. The last two tests hold the placer to "no
// queued job waits while an eligible worker has room" where it used to fail:
// behind a full batch of jobs that wait for a missing label, and after an
// agent's stalled heartbeats resume. The last: an agent that connects again
// through the other replica ends its old stream, which only its heartbeats
// (recorded in batches) can tell the old replica.

import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService, JobState, type Job } from "../../gen/muster/v1/job_pb.js";
import { WorkerHealth, WorkerService } from "../../gen/muster/v1/worker_pb.js";
import { WorkerPoolService } from "../../gen/muster/v1/worker_pool_pb.js";
import { createTestSchema, type TestSchema } from "../support/postgres.ts";
import { deleteKeysWithPrefix, REDIS_URL, requireRedis, uniqueKeyPrefix } from "../support/redis.ts";
import { startAgent, startServer, stopAll, type ManagedProcess, type ServerProcess } from "../support/processes.ts";
import { startFakeAgent } from "../faults/harness/fake-agent.ts";
import { waitUntil as waitFor } from "../support/wait.ts";

const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT]);
const CAPACITY = 2;
const JOBS_PER_REPLICA = 12;
const LOG_LINES = 50;
/** How often ListWorkers is sampled while jobs run. */
const SAMPLE_EVERY_MS = 25;

interface Replica {
  name: "A" | "B";
  server: ServerProcess;
  pools: Client<typeof WorkerPoolService>;
  workers: Client<typeof WorkerService>;
  jobs: Client<typeof JobService>;
}

const waitUntil = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000) => waitFor(what, probe, timeoutMs, 50);

describe("two server replicas on one Postgres and one Redis", () => {
  let schema: TestSchema;
  let prefix: string;
  let dir: string;
  let a: Replica;
  let b: Replica;
  let poolId: string;
  let soloPool: string;
  let soloAgent: ManagedProcess;
  /** Worker id -> the replica its agent connected to. */
  const connectedTo = new Map<string, "A" | "B">();

  function replica(name: "A" | "B", server: ServerProcess): Replica {
    const transport = createGrpcTransport({ baseUrl: `http://${server.api}` });
    return {
      name,
      server,
      pools: createClient(WorkerPoolService, transport),
      workers: createClient(WorkerService, transport),
      jobs: createClient(JobService, transport),
    };
  }

  before(async () => {
    await requireRedis();
    schema = await createTestSchema("two_replicas");
    prefix = uniqueKeyPrefix("two-replicas");
    dir = await mkdtemp(path.join(tmpdir(), "muster-two-replicas-"));
    const env = (name: string) => ({
      MUSTER_DATABASE_URL: schema.url,
      MUSTER_DATABASE_SCHEMA: schema.schema,
      MUSTER_REDIS_URL: REDIS_URL,
      MUSTER_REDIS_PREFIX: prefix,
      MUSTER_REPLICA_ID: `replica-${name}`,
      MUSTER_HEARTBEAT_INTERVAL_MS: "300",
      MUSTER_LEASE_TTL_MS: "3000",
      MUSTER_DATA_DIR: path.join(dir, `data-${name}`),
    });
    // One after the other: the first applies the migrations, the second finds them applied.
    a = replica("A", await startServer(env("a")));
    b = replica("B", await startServer(env("b")));

    const created = await a.pools.createWorkerPool({ name: "shared", description: "two replicas" });
    poolId = created.workerPool!.id;
    const agent = (name: string, target: Replica, capacity: number, token: string) =>
      startAgent({ MUSTER_LOG_LEVEL: "info" }, [
        "--url",
        target.server.agent,
        "--name",
        name,
        "--capacity",
        String(capacity),
        "--state-dir",
        path.join(dir, name),
        "--token",
        token,
      ]);
    for (const [name, target] of [
      ["a1", a],
      ["a2", a],
      ["b1", b],
      ["b2", b],
    ] as const) {
      agent(name, target, CAPACITY, created.registrationToken);
    }
    // A pool of its own for the stalled-heartbeat test, its one agent on B.
    const solo = await a.pools.createWorkerPool({ name: "solo", description: "one agent, on B" });
    soloPool = solo.workerPool!.id;
    soloAgent = agent("solo", b, 1, solo.registrationToken);
    // Both replicas see all four healthy: health lives in the shared Redis.
    for (const r of [a, b]) {
      const listed = await waitUntil(`four healthy workers seen from ${r.name}`, async () => {
        const { workers } = await r.workers.listWorkers({ workerPoolId: poolId });
        return workers.filter((w) => w.health === WorkerHealth.HEALTHY).length === 4 ? workers : undefined;
      });
      for (const worker of listed) connectedTo.set(worker.id, worker.name.startsWith("a") ? "A" : "B");
    }
  });

  after(async () => {
    await stopAll();
    await schema?.drop();
    if (prefix !== undefined) await deleteKeysWithPrefix(prefix);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  async function readLogs(r: Replica, jobId: string): Promise<{ seqs: bigint[]; text: string }> {
    const seqs: bigint[] = [];
    const parts: Buffer[] = [];
    for await (const response of r.jobs.getJobLogs({ jobId, fromSeq: 0n, follow: false })) {
      seqs.push(response.chunk!.seq);
      parts.push(Buffer.from(response.chunk!.data));
    }
    return { seqs, text: Buffer.concat(parts).toString("utf8") };
  }

  /** Rethrows a wait's timeout with where the job stands and why. */
  function explainWait(jobId: string) {
    return async (error: Error): Promise<never> => {
      const { job } = await a.jobs.getJob({ id: jobId });
      throw new Error(`${error.message}; it is ${JobState[job!.state]}: ${job!.placement?.workerReason || job!.message}`);
    };
  }

  async function waitForEnd(r: Replica, ids: string[], timeoutMs = 20_000): Promise<Job[]> {
    return waitUntil(
      `${ids.length} jobs to end`,
      async () => {
        const got = await Promise.all(ids.map((id) => r.jobs.getJob({ id })));
        return got.every((g) => TERMINAL.has(g.job!.state)) ? got.map((g) => g.job!) : undefined;
      },
      timeoutMs,
    );
  }

  test("jobs submitted to both replicas run once each, on agents of either, within capacity", { timeout: 60_000 }, async () => {
    const ranFile = path.join(dir, "ran.log");
    // Sample every worker's active leases from both replicas while the jobs run.
    const maxLeases = new Map<string, number>();
    let maxTotal = 0;
    let sampling = true;
    const sampler = (async () => {
      for (let turn = 0; sampling; turn++) {
        const r = turn % 2 === 0 ? a : b;
        const { workers } = await r.workers.listWorkers({ workerPoolId: poolId });
        let total = 0;
        for (const w of workers) {
          total += w.activeLeases;
          maxLeases.set(w.name, Math.max(maxLeases.get(w.name) ?? 0, w.activeLeases));
        }
        maxTotal = Math.max(maxTotal, total);
        await sleep(SAMPLE_EVERY_MS);
      }
    })();

    const submissions = Array.from({ length: JOBS_PER_REPLICA * 2 }, (_, n) => {
      const on = n % 2 === 0 ? a : b;
      const name = `job-${n}`;
      return on.jobs
        .submitJob({
          name,
          workerPoolId: poolId,
          env: { RAN_FILE: ranFile, JOB_NAME: name },
          script: `echo "$JOB_NAME" >> "$RAN_FILE"; for i in $(seq 1 ${LOG_LINES}); do echo "${name} line $i"; done; sleep 0.5; echo "${name} done"`,
        })
        .then((response) => ({ id: response.job!.id, name, submittedOn: on }));
    });
    const submitted = await Promise.all(submissions);
    let finished: Job[];
    try {
      finished = await waitForEnd(a, submitted.map((s) => s.id));
    } finally {
      sampling = false;
      await sampler;
    }

    // Exactly once: each job ended SUCCEEDED on its first attempt, and its script ran once.
    for (const job of finished) {
      assert.equal(job.state, JobState.SUCCEEDED, `${job.name}: ${job.message}`);
      assert.equal(job.attempt, 1, `${job.name} placed once`);
      assert.ok(connectedTo.has(job.workerId), `${job.name} ran on a registered agent`);
    }
    const ran = (await readFile(ranFile, "utf8")).trim().split("\n").sort();
    assert.deepEqual(ran, submitted.map((s) => s.name).sort(), "every script ran exactly once");

    // Any replica places on any worker: jobs crossed from A to B's agents and back.
    const byId = new Map(finished.map((job) => [job.id, job]));
    const crossed = { AtoB: 0, BtoA: 0 };
    for (const s of submitted) {
      const ranOn = connectedTo.get(byId.get(s.id)!.workerId);
      if (s.submittedOn.name === "A" && ranOn === "B") crossed.AtoB++;
      if (s.submittedOn.name === "B" && ranOn === "A") crossed.BtoA++;
    }
    assert.ok(crossed.AtoB > 0, `a job submitted on A ran on an agent of B (${JSON.stringify(crossed)})`);
    assert.ok(crossed.BtoA > 0, `a job submitted on B ran on an agent of A (${JSON.stringify(crossed)})`);
    assert.equal(new Set(finished.map((job) => job.workerId)).size, 4, "all four workers took jobs");

    // Complete, ordered logs, the same from both replicas.
    for (const s of submitted) {
      const expected =
        Array.from({ length: LOG_LINES }, (_, i) => `${s.name} line ${i + 1}`).join("\n") + `\n${s.name} done\n`;
      const other = s.submittedOn === a ? b : a;
      const fromOther = await readLogs(other, s.id);
      assert.equal(fromOther.text, expected, `${s.name}: log read on ${other.name}, submitted on ${s.submittedOn.name}`);
      assert.deepEqual(fromOther.seqs, fromOther.seqs.map((_, i) => BigInt(i + 1)), `${s.name}: sequence numbers from 1`);
      assert.deepEqual(await readLogs(s.submittedOn, s.id), fromOther, `${s.name}: both replicas serve the same log`);
    }

    // Capacity: leases overlapped (the sample saw it) and no worker ever went past its capacity.
    assert.ok(maxTotal > 4, `the sampler saw overlapping leases (max total ${maxTotal})`);
    for (const [name, max] of maxLeases) assert.ok(max <= CAPACITY, `${name} held ${max} leases, capacity ${CAPACITY}`);

    // Every lease released, as both replicas see it.
    for (const r of [a, b]) {
      await waitUntil(`no active leases seen from ${r.name}`, async () => {
        const { workers } = await r.workers.listWorkers({ workerPoolId: poolId });
        return workers.every((w) => w.activeLeases === 0) ? true : undefined;
      }, 5000);
    }
  });

  test("WatchJob on B follows a job submitted on A through to SUCCEEDED", { timeout: 30_000 }, async () => {
    const submitted = await a.jobs.submitJob({ name: "watched", workerPoolId: poolId, script: "echo watched; sleep 1" });
    const id = submitted.job!.id;
    const states: JobState[] = [];
    for await (const response of b.jobs.watchJob({ id }, { signal: AbortSignal.timeout(20_000) })) {
      if (states.at(-1) !== response.job!.state) states.push(response.job!.state);
    }
    assert.equal(states.at(-1), JobState.SUCCEEDED, `states seen on B: ${states.map((s) => JobState[s]).join(" -> ")}`);
    assert.ok(states.length >= 2, `B saw the job change, not only its end: ${states.map((s) => JobState[s]).join(" -> ")}`);
    assert.equal((await a.jobs.getJob({ id })).job!.state, JobState.SUCCEEDED);
  });

  test("GetJobLogs follow on A streams, live, the log of a job whose agent is on B", { timeout: 30_000 }, async () => {
    const lines = Array.from({ length: 6 }, (_, n) => `line ${n + 1} \u00e9\u00e8`);
    const script = `for l in ${lines.map((l) => `'${l}'`).join(" ")}; do echo "$l"; sleep 0.3; done`;
    const submitted = await b.jobs.submitJob({ name: "followed-across", workerPoolId: soloPool, script });
    const id = submitted.job!.id;
    const seqs: bigint[] = [];
    const parts: Buffer[] = [];
    let stateAtFirstChunk: JobState | undefined;
    for await (const response of a.jobs.getJobLogs({ jobId: id, fromSeq: 0n, follow: true }, { signal: AbortSignal.timeout(20_000) })) {
      if (seqs.length === 0) stateAtFirstChunk = (await a.jobs.getJob({ id })).job!.state;
      seqs.push(response.chunk!.seq);
      parts.push(Buffer.from(response.chunk!.data));
    }
    assert.equal(stateAtFirstChunk, JobState.RUNNING, "the first lines reached the follower on A while the job still ran on B");
    assert.equal(Buffer.concat(parts).toString("utf8"), lines.map((l) => `${l}\n`).join(""), "every line once, in order");
    assert.deepEqual(seqs, seqs.map((_, i) => BigInt(i + 1)), "sequence numbers from 1, without gap or repeat");
    assert.equal((await a.jobs.getJob({ id })).job!.state, JobState.SUCCEEDED);
  });

  // "No queued job waits while an eligible worker has room": jobs waiting for
  // a label no worker carries (queue_timeout) do not hold back the jobs queued
  // after them, however many there are.
  test("a plain job queued behind 64 jobs waiting for a missing label still runs at once", { timeout: 30_000 }, async () => {
    const waiting = await Promise.all(
      Array.from({ length: 64 }, (_, n) =>
        (n % 2 === 0 ? a : b).jobs.submitJob({
          name: `needs-gpu-${n}`,
          workerPoolId: poolId,
          script: "echo never",
          requiredLabels: ["gpu"],
          queueTimeout: { seconds: 60n, nanos: 0 },
        }),
      ),
    );
    try {
      for (const w of waiting) assert.equal(w.job!.state, JobState.QUEUED, "a gpu job waits: no worker carries gpu");
      const plain = await b.jobs.submitJob({ name: "plain-behind-gpu", workerPoolId: poolId, script: "echo ran" });
      const job = await waitUntil(
        "the plain job to end while four workers sit idle",
        async () => {
          const { job } = await a.jobs.getJob({ id: plain.job!.id });
          return TERMINAL.has(job!.state) ? job! : undefined;
        },
        3000,
      ).catch(explainWait(plain.job!.id));
      assert.equal(job.state, JobState.SUCCEEDED);
    } finally {
      await Promise.all(waiting.map((w) => a.jobs.cancelJob({ id: w.job!.id })));
    }
  });

  // The same rule when health comes back without a reconnect: an agent whose
  // heartbeats stalled past the TTL (its stream still open) is healthy again
  // with its next heartbeat, and a job that waited for a healthy worker
  // (queue_timeout) runs then, not when its queue deadline comes.
  test("a job waiting for a healthy worker runs as soon as a stalled agent heartbeats again", { timeout: 30_000 }, async () => {
    const soloHealth = async () => (await a.workers.listWorkers({ workerPoolId: soloPool })).workers[0]?.health;
    await waitUntil("the solo agent healthy", async () => ((await soloHealth()) === WorkerHealth.HEALTHY ? true : undefined));
    soloAgent.child.kill("SIGSTOP");
    let id: string;
    try {
      await waitUntil("the stopped agent's heartbeat to go stale", async () =>
        (await soloHealth()) === WorkerHealth.HEALTHY ? undefined : true,
      );
      const submitted = await a.jobs.submitJob({
        name: "waits-for-health",
        workerPoolId: soloPool,
        script: "echo ran",
        queueTimeout: { seconds: 20n, nanos: 0 },
      });
      id = submitted.job!.id;
      assert.equal(submitted.job!.state, JobState.QUEUED, "no healthy worker yet: the job waits");
    } finally {
      soloAgent.child.kill("SIGCONT");
    }
    await waitUntil("the agent healthy again", async () => ((await soloHealth()) === WorkerHealth.HEALTHY ? true : undefined));
    const job = await waitUntil(
      "the waiting job to end once its worker is healthy",
      async () => {
        const { job } = await b.jobs.getJob({ id });
        return TERMINAL.has(job!.state) ? job! : undefined;
      },
      3000,
    ).catch(explainWait(id));
    assert.equal(job.state, JobState.SUCCEEDED);
  });

  test("a worker's stream superseded through the other replica is ended there at its next heartbeat", { timeout: 30_000 }, async () => {
    const { workerPool, registrationToken } = await a.pools.createWorkerPool({ name: "superseded", description: "one worker, two streams" });
    const onA = await startFakeAgent({ url: a.server.agent, token: registrationToken, name: "twice", heartbeatMs: 300 });
    const onB = await startFakeAgent({ url: b.server.agent, identity: { workerId: onA.workerId, credential: onA.credential }, heartbeatMs: 300 });
    try {
      const ended = await Promise.race([onA.ended, sleep(5000).then(() => null)]);
      assert.ok(ended !== null, "the stream on A was not ended");
      assert.equal(ended.code, 10, `ABORTED: ${ended.details}`);
      assert.match(ended.details, /no longer holds the worker/);
      await sleep(1000);
      const { workers } = await b.workers.listWorkers({ workerPoolId: workerPool!.id });
      assert.equal(workers[0]?.health, WorkerHealth.HEALTHY, "the newer stream, on B, keeps the worker healthy");
      assert.equal(await Promise.race([onB.ended.then(() => "ended"), sleep(10).then(() => "open")]), "open");
    } finally {
      onA.close();
      onB.close();
    }
  });
});
