import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { FinishOutcome } from "../gen/muster/v1/agent_pb.js";
import { createExecutor, type ExecutorOptions, type OutputStream } from "./executor.ts";

let root: string;
before(async () => {
  root = await mkdtemp(path.join(tmpdir(), "muster-executor-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let counter = 0;
function run(script: string, overrides: Partial<ExecutorOptions> = {}) {
  const output: Record<OutputStream, Buffer[]> = { stdout: [], stderr: [] };
  const executor = createExecutor({
    dir: path.join(root, `job-${++counter}`),
    script,
    env: { ...process.env },
    timeoutMs: null,
    killGraceMs: 1_000,
    onOutput: (stream, data) => output[stream].push(data),
    ...overrides,
  });
  return {
    executor,
    stdout: () => Buffer.concat(output.stdout),
    stderr: () => Buffer.concat(output.stderr),
  };
}

function groupAlive(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch (error) {
    assert.equal((error as NodeJS.ErrnoException).code, "ESRCH");
    return false;
  }
}

describe("executor", () => {
  test("exit 0 is EXITED with code 0", async () => {
    const { executor, stdout } = run("echo hello");
    await executor.start();
    const result = await executor.done;
    assert.equal(result.outcome, FinishOutcome.EXITED);
    assert.equal(result.exitCode, 0);
    assert.equal(stdout().toString(), "hello\n");
  });

  test("a non-zero exit code is reported as is", async () => {
    const { executor } = run("echo failing >&2; exit 42");
    await executor.start();
    const result = await executor.done;
    assert.equal(result.outcome, FinishOutcome.EXITED);
    assert.equal(result.exitCode, 42);
    assert.equal(result.signal, "");
  });

  test("stdout and stderr are captured as raw bytes, NUL and invalid UTF-8 included", async () => {
    const { executor, stdout, stderr } = run(String.raw`printf 'a\000b\377\376c'; printf 'e\000\303(' >&2`);
    await executor.start();
    await executor.done;
    assert.deepEqual(stdout(), Buffer.from([0x61, 0x00, 0x62, 0xff, 0xfe, 0x63]));
    assert.deepEqual(stderr(), Buffer.from([0x65, 0x00, 0xc3, 0x28]));
  });

  test("runs in its own directory with the environment it was given", async () => {
    const dir = path.join(root, "own-dir");
    const { executor, stdout } = run('pwd; echo "$MUSTER_JOB_ID/$MUSTER_ATTEMPT"; ls', {
      dir,
      env: { ...process.env, MUSTER_JOB_ID: "job-7", MUSTER_ATTEMPT: "2" },
    });
    await executor.start();
    await executor.done;
    assert.equal(stdout().toString(), `${dir}\njob-7/2\nscript.sh\n`);
    assert.deepEqual(await readdir(dir), ["script.sh"]);
  });

  test("a script that cannot be started is SPAWN_FAILED", async () => {
    const { executor } = run("echo never", { shell: path.join(root, "no-such-shell") });
    await executor.start();
    const result = await executor.done;
    assert.equal(result.outcome, FinishOutcome.SPAWN_FAILED);
    assert.match(result.message, /ENOENT/);
  });

  test("an unhandled signal is SIGNALED", async () => {
    const { executor } = run("kill -USR1 $$");
    await executor.start();
    const result = await executor.done;
    assert.equal(result.outcome, FinishOutcome.SIGNALED);
    assert.equal(result.signal, "SIGUSR1");
  });

  test("cancel of a script that ignores SIGINT and SIGTERM ends by SIGKILL within the grace, leaving no process", async () => {
    const { executor, stdout } = run("trap '' INT TERM; echo ready; sleep 30 & wait; sleep 30");
    await executor.start();
    const pid = executor.pid!;
    while (!stdout().toString().includes("ready")) await new Promise((resolve) => setTimeout(resolve, 10));
    const cancelledAt = Date.now();
    executor.cancel(600);
    const result = await executor.done;
    const elapsed = Date.now() - cancelledAt;
    assert.equal(result.outcome, FinishOutcome.CANCELLED);
    assert.equal(result.signal, "SIGKILL");
    assert.ok(elapsed >= 600, `ended after ${elapsed} ms, before the grace ended`);
    assert.ok(result.groupGone);
    assert.equal(groupAlive(pid), false);
  });

  test("cancel of a cooperative script ends it at the interrupt", async () => {
    const { executor, stdout } = run("trap 'echo interrupted; exit 130' INT; echo ready; while true; do sleep 0.05; done");
    await executor.start();
    while (!stdout().toString().includes("ready")) await new Promise((resolve) => setTimeout(resolve, 10));
    executor.cancel(10_000);
    const result = await executor.done;
    assert.equal(result.outcome, FinishOutcome.CANCELLED);
    assert.equal(result.exitCode, 130);
    assert.ok(result.durationMs < 5_000);
    assert.match(stdout().toString(), /interrupted/);
  });

  test("a script past its timeout is TIMED_OUT, escalating to SIGKILL", async () => {
    const { executor } = run("trap '' INT TERM; sleep 30", { timeoutMs: 200, killGraceMs: 300 });
    await executor.start();
    const pid = executor.pid!;
    const result = await executor.done;
    assert.equal(result.outcome, FinishOutcome.TIMED_OUT);
    assert.equal(result.signal, "SIGKILL");
    assert.ok(result.durationMs >= 500, `ended after ${result.durationMs} ms`);
    assert.equal(groupAlive(pid), false);
  });

  test("background processes left by a finished script are killed with it", async () => {
    const { executor } = run("sleep 30 & echo started");
    await executor.start();
    const pid = executor.pid!;
    const result = await executor.done;
    assert.equal(result.outcome, FinishOutcome.EXITED);
    assert.equal(result.exitCode, 0);
    assert.equal(groupAlive(pid), false);
  });

  test("close() kills at once", async () => {
    const { executor } = run("sleep 30");
    await executor.start();
    const result = await executor.close();
    assert.equal(result.outcome, FinishOutcome.SIGNALED);
    assert.equal(result.signal, "SIGKILL");
  });
});
