// The agent CLI as a real process against the fake AgentService: exit codes,
// signals (drain, then cancel), and logs that never carry a secret.

import * as grpc from "@grpc/grpc-js";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { FinishOutcome } from "../gen/muster/v1/agent_pb.js";
import {
  ackEverything,
  assignment,
  CREDENTIAL,
  helloAfter,
  startFakeServer,
  until,
  welcome,
  type FakeServer,
} from "./testing/fake-agent-server.ts";

const MAIN = fileURLToPath(new URL("./main.ts", import.meta.url));

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<number | null>;
}

function runAgent(args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, [MAIN, ...args], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on("data", (data: Buffer) => out.push(data));
  child.stderr!.on("data", (data: Buffer) => err.push(data));
  const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, stdout: () => Buffer.concat(out).toString(), stderr: () => Buffer.concat(err).toString(), exit };
}

function events(run: Run): string[] {
  return run
    .stdout()
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => (JSON.parse(line) as { event?: string }).event ?? "");
}

let root: string;
let server: FakeServer;
const running: Run[] = [];
before(async () => {
  root = await mkdtemp(path.join(tmpdir(), "muster-agent-cli-"));
  server = await startFakeServer();
});
after(async () => {
  for (const run of running) run.child.kill("SIGKILL");
  await server.close();
  await rm(root, { recursive: true, force: true });
});

describe("agent CLI", () => {
  test("--help prints the flags and exits 0", async () => {
    const run = runAgent(["--help"]);
    assert.equal(await run.exit, 0);
    assert.match(run.stdout(), /--capacity/);
    assert.match(run.stdout(), /MUSTER_TOKEN/);
  });

  test("a bad value exits 2 with a clear message", async () => {
    const run = runAgent(["--capacity", "0"]);
    assert.equal(await run.exit, 2);
    assert.match(run.stderr(), /--capacity \/ MUSTER_CAPACITY: 0 is not between 1 and 1000/);
  });

  test("no stored credential and no token exits 2", async () => {
    const run = runAgent(["--url", server.address, "--state-dir", path.join(root, "empty")]);
    assert.equal(await run.exit, 2);
    assert.match(run.stdout(), /no registration token/);
  });

  test("SIGTERM drains: the running job finishes and is reported, then exit 0; secrets are never logged", async () => {
    const mark = server.streams.length;
    const run = runAgent(["--url", server.address, "--state-dir", path.join(root, "drain"), "--name", "cli-worker"], {
      MUSTER_TOKEN: "good-token",
    });
    running.push(run);
    const stream = await helloAfter(server, mark);
    welcome(stream);
    stream.send(assignment("job-cli", "sleep 0.3; echo done-$MUSTER_TOKEN-"));
    await until(() => stream.received.some((m) => m.case === "accept"), "the acceptance");
    run.child.kill("SIGTERM");
    await until(() => stream.received.some((m) => m.case === "heartbeat" && m.value.draining), "a draining heartbeat");
    const finish = await until(() => stream.finishes()[0], "the finish");
    assert.equal(finish.outcome, FinishOutcome.EXITED);
    assert.equal(Buffer.concat(stream.logs().map((c) => c.data)).toString(), "done--\n", "jobs do not see the registration token");
    ackEverything(stream);
    assert.equal(await run.exit, 0);
    const seen = events(run);
    for (const event of ["registered", "connected", "assignment_received", "assignment_started", "assignment_finished", "draining", "stopped"]) {
      assert.ok(seen.includes(event), `logged ${event}`);
    }
    assert.doesNotMatch(run.stdout() + run.stderr(), /good-token/);
    assert.doesNotMatch(run.stdout() + run.stderr(), new RegExp(CREDENTIAL));
  });

  test("a second SIGTERM cancels running jobs with their grace, reports CANCELLED and exits", async () => {
    const mark = server.streams.length;
    const run = runAgent(["--url", server.address, "--state-dir", path.join(root, "cancel"), "--kill-grace-ms", "300"], {
      MUSTER_TOKEN: "good-token",
    });
    running.push(run);
    const stream = await helloAfter(server, mark);
    welcome(stream);
    stream.send(assignment("job-stubborn", "trap '' INT TERM; echo up; sleep 30 & wait"));
    await until(() => stream.logs().length > 0, "output");
    run.child.kill("SIGTERM");
    await until(() => events(run).includes("draining"), "draining");
    run.child.kill("SIGTERM");
    const finish = await until(() => stream.finishes()[0], "the finish");
    assert.equal(finish.outcome, FinishOutcome.CANCELLED);
    ackEverything(stream);
    assert.equal(await run.exit, 0);
  });

  test("a revoked credential exits 3 without retrying", async () => {
    const stateDir = path.join(root, "revoked");
    const first = runAgent(["--url", server.address, "--state-dir", stateDir], { MUSTER_TOKEN: "good-token" });
    running.push(first);
    const mark = server.streams.length;
    const stream = await helloAfter(server, mark);
    welcome(stream);
    first.child.kill("SIGTERM");
    assert.equal(await first.exit, 0);

    const admit = server.admit;
    server.admit = () => ({ code: grpc.status.UNAUTHENTICATED, details: "worker credential is unknown or revoked" });
    try {
      const before = server.streams.length;
      const run = runAgent(["--url", server.address, "--state-dir", stateDir]);
      running.push(run);
      assert.equal(await run.exit, 3);
      assert.match(run.stdout(), /credential rejected: the worker was deleted or its credential revoked/);
      assert.equal(server.streams.length, before + 1, "one attempt, no retry loop");
    } finally {
      server.admit = admit;
    }
  });
});
