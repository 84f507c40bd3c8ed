// The agent against a small fake AgentService on 127.0.0.1 (grpc-js, port 0,
// served from the same protobuf-es descriptors): registration, the Connect
// session, assignments, logs, finish reports, reconnects and the ways a lease
// or a credential can be lost.

import { durationFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { FinishOutcome } from "../gen/muster/v1/agent_pb.js";
import { silentLogger } from "../src/logger.ts";
import { createAgent, EXIT_CONFIG, EXIT_CREDENTIAL_REJECTED, type Agent } from "./agent.ts";
import type { AgentConfig } from "./config.ts";
import { readWorkerState } from "./state-file.ts";
import {
  ackEverything,
  assignment,
  CREDENTIAL,
  helloAfter,
  startFakeServer,
  until,
  welcome,
  type FakeServer,
  type FakeStream,
} from "./testing/fake-agent-server.ts";

let root: string;
let server: FakeServer;
const agents: Agent[] = [];
let counter = 0;

function agentConfig(overrides: Partial<AgentConfig> = {}): AgentConfig {
  const stateDir = path.join(root, `agent-${++counter}`);
  return {
    url: server.address,
    token: "good-token",
    name: "test-worker",
    labels: ["linux", "region=eu"],
    capacity: 2,
    stateDir,
    workDir: path.join(stateDir, "work"),
    logFlushMs: 10,
    maxChunkBytes: 65536,
    backoffInitialMs: 10,
    backoffMaxMs: 50,
    ackTimeoutMs: 5000,
    killGraceMs: 400,
    hostname: "test-host",
    agentVersion: "0.0.0-test",
    logLevel: "silent",
    ...overrides,
  };
}

function startAgent(config: AgentConfig): Agent {
  const agent = createAgent(config, { logger: silentLogger() });
  agents.push(agent);
  return agent;
}

/** Connects an agent and answers its Hello; returns the stream. */
async function connected(agent: Agent, extra: { maxChunkBytes?: number } = {}): Promise<FakeStream> {
  const mark = server.streams.length;
  const started = agent.start();
  const stream = await helloAfter(server, mark);
  welcome(stream, extra);
  await started;
  return stream;
}

before(async () => {
  root = await mkdtemp(path.join(tmpdir(), "muster-agent-"));
  server = await startFakeServer();
});
afterEach(async () => {
  await Promise.all(agents.splice(0).map((agent) => agent.close()));
});
after(async () => {
  await server.close();
  await rm(root, { recursive: true, force: true });
});

describe("agent", () => {
  test("registers, connects, runs an assignment, streams its logs and reports the finish", async () => {
    const config = agentConfig();
    const agent = startAgent(config);
    const stream = await connected(agent, { maxChunkBytes: 16 });

    assert.equal(server.registrations.length, 1);
    const registration = server.registrations[0];
    assert.equal(registration.registrationToken, "good-token");
    assert.equal(registration.name, "test-worker");
    assert.deepEqual(registration.labels, ["linux", "region=eu"]);
    assert.equal(registration.capacity, 2);
    assert.equal(registration.hostname, "test-host");
    assert.equal(registration.agentVersion, "0.0.0-test");
    assert.deepEqual(await readWorkerState(config.stateDir), { workerId: "worker-1", credential: CREDENTIAL, url: server.address });

    assert.equal(stream.authorization, `Bearer ${CREDENTIAL}`);
    assert.equal(stream.hello!.workerId, "worker-1");
    assert.ok(stream.hello!.sessionId.length > 0);
    assert.equal(stream.hello!.sessionId, agent.sessionId);
    assert.equal(stream.hello!.capacity, 2);
    assert.deepEqual(stream.hello!.labels, ["linux", "region=eu"]);
    assert.deepEqual(stream.hello!.running, []);
    assert.equal(agent.state, "running");
    assert.equal(agent.workerId, "worker-1");

    await until(() => stream.received.some((m) => m.case === "heartbeat"), "a heartbeat");

    stream.send(
      assignment("job-a", 'echo "$MUSTER_JOB_ID $MUSTER_ATTEMPT $MUSTER_RUN_ID $MUSTER_JOB_NAME $GREETING [$MUSTER_TOKEN]"; echo oops >&2; exit 3', {
        env: { GREETING: "hello" },
      }),
    );
    const finish = await until(() => stream.finishes()[0], "the finish report");
    const accept = stream.received.find((m) => m.case === "accept");
    assert.deepEqual(accept && { jobId: accept.value.jobId, attempt: accept.value.attempt }, { jobId: "job-a", attempt: 1 });
    assert.ok(
      stream.received.findIndex((m) => m.case === "accept") < stream.received.findIndex((m) => m.case === "log"),
      "the acceptance goes out before any output",
    );
    assert.equal(finish.outcome, FinishOutcome.EXITED);
    assert.equal(finish.exitCode, 3);

    const logs = stream.logs();
    assert.deepEqual(logs.map((c) => c.seq), logs.map((_, i) => BigInt(i + 1)));
    assert.equal(finish.lastSeq, BigInt(logs.length));
    for (const chunk of logs) assert.ok(chunk.data.byteLength <= 16, "chunks respect the server's limit");
    const text = (stream: number) => Buffer.concat(logs.filter((c) => c.stream === stream).map((c) => c.data)).toString();
    assert.equal(text(1), "job-a 1 run-9 job-a-name hello []\n");
    assert.equal(text(2), "oops\n");

    const dir = path.join(config.workDir, "job-a-1");
    assert.ok(existsSync(dir), "the work directory stays until the finish is acknowledged");
    ackEverything(stream);
    await until(() => !existsSync(dir), "the work directory to be removed");

    await agent.drain();
    assert.equal(agent.state, "stopped");
    assert.deepEqual(await agent.stopped, { exitCode: 0, reason: "drained" });
    await until(() => stream.ended, "the stream to end");
  });

  test("a restarted agent reuses its credential and does not register again", async () => {
    const config = agentConfig();
    const before = server.registrations.length;
    const first = startAgent(config);
    await connected(first);
    await first.close();
    assert.equal(server.registrations.length, before + 1);

    const again = startAgent({ ...config, token: null });
    const stream = await connected(again);
    assert.equal(server.registrations.length, before + 1);
    assert.equal(stream.hello!.workerId, "worker-1");
    assert.equal(again.workerId, "worker-1");
  });

  test("without a stored credential and without a token it stops with exit code 2", async () => {
    const agent = startAgent(agentConfig({ token: null }));
    await assert.rejects(agent.start(), /no registration token/);
    assert.equal((await agent.stopped).exitCode, EXIT_CONFIG);
    assert.equal(agent.state, "failed");
  });

  test("a rejected registration token stops it with exit code 3, without retrying", async () => {
    const before = server.registrations.length;
    const agent = startAgent(agentConfig({ token: "bad-token" }));
    await assert.rejects(agent.start(), /registration token rejected/);
    assert.equal((await agent.stopped).exitCode, EXIT_CREDENTIAL_REJECTED);
    assert.equal(server.registrations.length, before + 1);
  });

  test("a rejected credential on Connect stops it with exit code 3 and kills running jobs", async () => {
    const agent = startAgent(agentConfig());
    const stream = await connected(agent);
    stream.send(assignment("job-revoked", "echo started; sleep 30"));
    await until(() => stream.logs().length > 0, "output");
    const admit = server.admit;
    server.admit = () => ({ code: grpc.status.UNAUTHENTICATED, details: "worker credential is unknown or revoked" });
    try {
      stream.fail(grpc.status.UNAVAILABLE, "replica restarting");
      const stop = await agent.stopped;
      assert.equal(stop.exitCode, EXIT_CREDENTIAL_REJECTED);
      assert.match(stop.reason, /credential rejected: the worker was deleted or its credential revoked/);
      assert.equal(agent.state, "failed");
    } finally {
      server.admit = admit;
    }
  });

  test("after a dropped stream it reconnects, is adopted, and resends unacknowledged output and the finish", async () => {
    const agent = startAgent(agentConfig());
    const first = await connected(agent);
    first.send(assignment("job-r", "for i in 1 2 3; do echo line-$i; sleep 0.05; done; sleep 0.3; echo tail"));
    await until(() => first.logs().length >= 2, "some output");
    first.send({ case: "ack", value: { jobId: "job-r", attempt: 1, seq: 1n } });
    await new Promise((resolve) => setTimeout(resolve, 30));
    const sessionBefore = agent.sessionId;
    const mark = server.streams.length;
    first.fail(grpc.status.UNAVAILABLE, "connection reset");

    const second = await helloAfter(server, mark);
    assert.notEqual(second.hello!.sessionId, sessionBefore);
    assert.equal(second.hello!.running.length, 1);
    assert.equal(second.hello!.running[0].jobId, "job-r");
    assert.equal(second.hello!.running[0].ackedSeq, 1n);
    // The server stored one more chunk than it acknowledged before the drop.
    second.send({
      case: "welcome",
      value: {
        workerId: "worker-1",
        heartbeatInterval: durationFromMs(100),
        adopted: [{ jobId: "job-r", attempt: 1, ackedSeq: 2n }],
        maxChunkBytes: 1024,
      },
    });
    const finish = await until(() => second.finishes()[0], "the finish on the new stream");
    const resent = second.logs();
    assert.equal(resent[0].seq, 3n, "resending starts after what the server has");
    assert.deepEqual(resent.map((c) => c.seq), resent.map((_, i) => BigInt(i + 3)));
    assert.equal(finish.lastSeq, resent.at(-1)!.seq);
    const all = Buffer.concat([...first.logs().slice(0, 2), ...resent].map((c) => c.data)).toString();
    assert.equal(all, "line-1\nline-2\nline-3\ntail\n");
    ackEverything(second);
    await agent.drain();
  });

  test("a finish that was never acknowledged is sent again after a reconnect", async () => {
    const agent = startAgent(agentConfig());
    const first = await connected(agent);
    first.send(assignment("job-f", "echo done"));
    await until(() => first.finishes()[0], "the finish");
    const mark = server.streams.length;
    first.fail(grpc.status.UNAVAILABLE, "connection reset");
    const second = await helloAfter(server, mark);
    assert.equal(second.hello!.running[0]?.jobId, "job-f");
    welcome(second);
    const finish = await until(() => second.finishes()[0], "the finish again");
    assert.equal(finish.outcome, FinishOutcome.EXITED);
    ackEverything(second);
    await agent.drain();
    assert.equal((await agent.stopped).exitCode, 0);
  });

  test("Cancel interrupts the job and reports CANCELLED", async () => {
    const agent = startAgent(agentConfig());
    const stream = await connected(agent);
    stream.send(assignment("job-c", "trap 'echo bye; exit 1' INT; echo ready; while true; do sleep 0.05; done"));
    await until(() => stream.logs().length > 0, "output");
    stream.send({ case: "cancel", value: { jobId: "job-c", attempt: 1, gracePeriod: durationFromMs(5_000) } });
    const finish = await until(() => stream.finishes()[0], "the finish");
    assert.equal(finish.outcome, FinishOutcome.CANCELLED);
    assert.match(Buffer.concat(stream.logs().map((c) => c.data)).toString(), /bye/);
    ackEverything(stream);
    await agent.drain();
  });

  test("an assignment past its timeout reports TIMED_OUT", async () => {
    const agent = startAgent(agentConfig({ killGraceMs: 200 }));
    const stream = await connected(agent);
    stream.send(assignment("job-t", "sleep 30", { timeoutMs: 100 }));
    const finish = await until(() => stream.finishes()[0], "the finish");
    assert.equal(finish.outcome, FinishOutcome.TIMED_OUT);
    ackEverything(stream);
    await agent.drain();
  });

  test("LeaseLost kills the job at once and nothing more is sent about it", async () => {
    const config = agentConfig();
    const agent = startAgent(config);
    const stream = await connected(agent);
    stream.send(assignment("job-l", "trap '' INT TERM; while true; do echo tick; sleep 0.02; done"));
    await until(() => stream.logs().length > 0, "output");
    stream.send({ case: "leaseLost", value: { jobId: "job-l", attempt: 1, reason: "lease expired" } });
    await until(() => !existsSync(path.join(config.workDir, "job-l-1")), "the work directory to go");
    const count = stream.received.length;
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.ok(stream.received.slice(count).every((m) => m.case === "heartbeat"), "only heartbeats after the lease was lost");
    assert.equal(stream.finishes().length, 0);
    await agent.drain();
    assert.equal((await agent.stopped).exitCode, 0);
  });

  test("Welcome.abandon kills an attempt the server no longer holds", async () => {
    const agent = startAgent(agentConfig());
    const first = await connected(agent);
    first.send(assignment("job-x", "echo running; sleep 30"));
    await until(() => first.logs().length > 0, "output");
    const mark = server.streams.length;
    first.fail(grpc.status.UNAVAILABLE, "connection reset");
    const second = await helloAfter(server, mark);
    second.send({ case: "welcome", value: { workerId: "worker-1", abandon: [{ jobId: "job-x", attempt: 1 }], maxChunkBytes: 1024 } });
    // Nothing runs any more, so a drain ends at once.
    await agent.drain();
    assert.equal(second.finishes().length, 0);
    assert.equal(second.logs().length, 0);
  });

  test("a Rejection with FAILED_PRECONDITION for an attempt drops it like a lost lease", async () => {
    const agent = startAgent(agentConfig());
    const stream = await connected(agent);
    stream.send(assignment("job-p", "sleep 30"));
    await until(() => stream.received.some((m) => m.case === "accept"), "the acceptance");
    stream.send({ case: "rejection", value: { jobId: "job-p", attempt: 1, code: grpc.status.FAILED_PRECONDITION, message: "lease lost" } });
    await agent.drain();
    assert.equal(stream.finishes().length, 0);
  });

  test("drain waits for running jobs and their acknowledgement, heartbeating draining=true", async () => {
    const agent = startAgent(agentConfig());
    const stream = await connected(agent);
    stream.send(assignment("job-d", "sleep 0.2; echo finished"));
    await until(() => stream.received.some((m) => m.case === "accept"), "the acceptance");
    const drained = agent.drain();
    assert.equal(agent.state, "draining");
    await until(() => stream.received.some((m) => m.case === "heartbeat" && m.value.draining), "a draining heartbeat");
    stream.send(assignment("job-late", "echo should not run"));
    const finish = await until(() => stream.finishes()[0], "the finish");
    assert.equal(finish.exitCode, 0);
    assert.ok(!stream.received.some((m) => m.case === "accept" && m.value.jobId === "job-late"), "no new work while draining");
    assert.equal(agent.state, "draining", "still waiting for the acknowledgement");
    ackEverything(stream);
    await drained;
    assert.equal(agent.state, "stopped");
  });

  test("Drain{exit_when_idle} stops the agent once idle", async () => {
    const agent = startAgent(agentConfig());
    const stream = await connected(agent);
    stream.send({ case: "drain", value: { exitWhenIdle: true } });
    assert.deepEqual(await agent.stopped, { exitCode: 0, reason: "drained" });
  });

  test("close() cancels running jobs, reports them CANCELLED, and leaves nothing behind", async () => {
    const config = agentConfig({ killGraceMs: 300 });
    const agent = startAgent(config);
    const stream = await connected(agent);
    stream.send(assignment("job-k", "trap '' INT TERM; echo up; sleep 30 & wait"));
    await until(() => stream.logs().length > 0, "output");
    const closed = agent.close();
    const finish = await until(() => stream.finishes()[0], "the finish");
    assert.equal(finish.outcome, FinishOutcome.CANCELLED);
    ackEverything(stream);
    await closed;
    assert.equal(agent.state, "stopped");
    assert.deepEqual(await readdir(config.workDir), []);
  });
});
