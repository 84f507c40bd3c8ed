// The store's Lua commands: one file per atomic command under ./lua, named
// `<command>-<number of keys>.lua`, read once when a store is created and
// registered on its connection with `defineCommand` (EVALSHA, falling back to
// EVAL after a SCRIPT FLUSH). Lines `--- @include "includes/<name>"` splice in
// shared helpers from ./lua/includes.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Redis } from "ioredis";

const LUA_DIR = join(import.meta.dirname, "lua");
const INCLUDE_LINE = /^--- @include "([\w/-]+)"$/gm;
const SCRIPT_FILE = /^([a-z-]+)-(\d+)\.lua$/;
/** Commands are registered under this prefix so they cannot shadow Redis commands. */
const COMMAND_PREFIX = "muster:";

export type ScriptName =
  | "acquire"
  | "acquire-many"
  | "attach"
  | "deliver"
  | "detach"
  | "heartbeat-many"
  | "lease"
  | "reap"
  | "release"
  | "remove-worker"
  | "restore"
  | "update-worker"
  | "upgrade"
  | "worker-status";

export interface LoadedScript {
  name: string;
  numberOfKeys: number;
  lua: string;
}

function expandIncludes(source: string, seen: Set<string>): string {
  return source.replace(INCLUDE_LINE, (_line, include: string) => {
    if (seen.has(include)) return "";
    seen.add(include);
    return expandIncludes(readFileSync(join(LUA_DIR, `${include}.lua`), "utf8"), seen);
  });
}

/** Reads every script once per process; stores created later reuse the text. */
let loaded: Map<string, LoadedScript> | undefined;

export function loadScripts(): Map<string, LoadedScript> {
  if (loaded) return loaded;
  const scripts = new Map<string, LoadedScript>();
  for (const file of readdirSync(LUA_DIR)) {
    const match = SCRIPT_FILE.exec(file);
    if (!match) continue;
    const [, name, keys] = match;
    const lua = expandIncludes(readFileSync(join(LUA_DIR, file), "utf8"), new Set());
    scripts.set(name, { name, numberOfKeys: Number(keys), lua });
  }
  loaded = scripts;
  return scripts;
}

export type ScriptRunner = (name: ScriptName, keys: string[], args: (string | number)[]) => Promise<unknown>;

/** Registers every script on the connection and returns a typed way to call them. */
export function defineScripts(redis: Redis): ScriptRunner {
  const scripts = loadScripts();
  for (const script of scripts.values()) {
    redis.defineCommand(COMMAND_PREFIX + script.name, { lua: script.lua, numberOfKeys: script.numberOfKeys });
  }
  // defineCommand adds methods ioredis cannot type; this is the one place that reaches them.
  const commands = redis as unknown as Record<string, (...args: (string | number)[]) => Promise<unknown>>;
  return (name, keys, args) => {
    const script = scripts.get(name);
    if (!script) throw new Error(`no Lua script named ${name} in ${LUA_DIR}`);
    if (keys.length !== script.numberOfKeys) {
      throw new Error(`script ${name} takes ${script.numberOfKeys} keys, got ${keys.length}`);
    }
    return commands[COMMAND_PREFIX + script.name](...keys, ...args);
  };
}
