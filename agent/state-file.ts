// The worker's identity on disk: <state-dir>/worker.json, mode 0600, holding
// the worker id and the credential Register returned. A restarted agent reads
// it and connects without registering again. Writes go to a temporary file in
// the same directory and are renamed over the old one, so a crash mid-write
// leaves either the old file or the new one, never half of either.

import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";

export const STATE_FILE_NAME = "worker.json";

export interface WorkerState {
  workerId: string;
  credential: string;
  /** The agent plane address the credential was issued by. */
  url: string;
}

export class StateFileError extends Error {
  override name = "StateFileError";
}

export function stateFilePath(stateDir: string): string {
  return path.join(stateDir, STATE_FILE_NAME);
}

/** The stored state, or null when there is none yet. Throws StateFileError when it exists but is unusable. */
export async function readWorkerState(stateDir: string): Promise<WorkerState | null> {
  const file = stateFilePath(stateDir);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new StateFileError(`cannot read ${file}: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new StateFileError(`${file} is not valid JSON; remove it and register again with a token`);
  }
  const state = parsed as Partial<WorkerState> | null;
  if (
    typeof state !== "object" ||
    state === null ||
    typeof state.workerId !== "string" ||
    state.workerId === "" ||
    typeof state.credential !== "string" ||
    state.credential === "" ||
    typeof state.url !== "string"
  ) {
    throw new StateFileError(`${file} lacks workerId, credential or url; remove it and register again with a token`);
  }
  return { workerId: state.workerId, credential: state.credential, url: state.url };
}

/** Writes the state atomically with mode 0600 (the directory is created 0700 if missing). */
export async function writeWorkerState(stateDir: string, state: WorkerState): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const file = stateFilePath(stateDir);
  const temp = path.join(stateDir, `.${STATE_FILE_NAME}.${randomBytes(6).toString("hex")}.tmp`);
  const body = `${JSON.stringify({ workerId: state.workerId, credential: state.credential, url: state.url }, null, 2)}\n`;
  try {
    // Created 0600 from the start: the credential is never readable by others, not even briefly.
    const handle = await open(temp, "wx", 0o600);
    try {
      await handle.writeFile(body, "utf8");
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw new StateFileError(`cannot write ${file}: ${(error as Error).message}`);
  }
}
