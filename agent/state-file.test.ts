import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { readWorkerState, STATE_FILE_NAME, StateFileError, writeWorkerState } from "./state-file.ts";

let root: string;
before(async () => {
  root = await mkdtemp(path.join(tmpdir(), "muster-state-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

const state = { workerId: "w-1", credential: "worker_secret", url: "127.0.0.1:7071" };

describe("state file", () => {
  test("no file yet reads as null", async () => {
    assert.equal(await readWorkerState(path.join(root, "none")), null);
  });

  test("is written with mode 0600 in a 0700 directory and read back on restart", async () => {
    const dir = path.join(root, "fresh", "nested");
    await writeWorkerState(dir, state);
    assert.equal((await stat(path.join(dir, STATE_FILE_NAME))).mode & 0o777, 0o600);
    assert.equal((await stat(dir)).mode & 0o777, 0o700);
    assert.deepEqual(await readWorkerState(dir), state);
  });

  test("a rewrite replaces the file atomically and leaves no temporary file", async () => {
    const dir = path.join(root, "rewrite");
    await writeWorkerState(dir, state);
    const before = await stat(path.join(dir, STATE_FILE_NAME));
    await writeWorkerState(dir, { ...state, credential: "rotated" });
    const after = await stat(path.join(dir, STATE_FILE_NAME));
    // rename() swaps in a new inode: a reader sees the old file or the new one, never a partial write.
    assert.notEqual(after.ino, before.ino);
    assert.equal(after.mode & 0o777, 0o600);
    assert.deepEqual(await readdir(dir), [STATE_FILE_NAME]);
    assert.equal((await readWorkerState(dir))?.credential, "rotated");
  });

  test("a corrupt or incomplete file is an error, not a silent re-registration", async () => {
    const dir = path.join(root, "corrupt");
    await writeWorkerState(dir, state);
    await writeFile(path.join(dir, STATE_FILE_NAME), "{ not json");
    await assert.rejects(readWorkerState(dir), StateFileError);
    await writeFile(path.join(dir, STATE_FILE_NAME), JSON.stringify({ workerId: "w-1" }));
    await assert.rejects(readWorkerState(dir), /lacks workerId, credential or url/);
    assert.match(await readFile(path.join(dir, STATE_FILE_NAME), "utf8"), /w-1/);
  });
});
