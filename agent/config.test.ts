import assert from "node:assert/strict";
import { hostname } from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { AGENT_VERSION, ConfigError, loadAgentConfig } from "./config.ts";

describe("agent config", () => {
  test("defaults work on one machine", () => {
    const config = loadAgentConfig([], {});
    assert.equal(config.url, "127.0.0.1:7071");
    assert.equal(config.token, null);
    assert.equal(config.name, hostname());
    assert.deepEqual(config.labels, []);
    assert.equal(config.capacity, 1);
    assert.equal(config.stateDir, path.resolve(".muster/agent"));
    assert.equal(config.workDir, path.resolve(".muster/agent/work"));
    assert.equal(config.logFlushMs, 50);
    assert.equal(config.maxChunkBytes, 65536);
    assert.equal(config.backoffInitialMs, 250);
    assert.equal(config.backoffMaxMs, 10000);
    assert.equal(config.killGraceMs, 10000);
    assert.equal(config.agentVersion, AGENT_VERSION);
  });

  test("the environment is read, and flags win over it", () => {
    const env = {
      MUSTER_URL: "10.0.0.1:9000",
      MUSTER_TOKEN: "env-token",
      MUSTER_NAME: "from-env",
      MUSTER_LABELS: "linux, docker,,region=eu",
      MUSTER_CAPACITY: "4",
      MUSTER_STATE_DIR: "/tmp/env-state",
    };
    const fromEnv = loadAgentConfig([], env);
    assert.equal(fromEnv.url, "10.0.0.1:9000");
    assert.equal(fromEnv.token, "env-token");
    assert.equal(fromEnv.name, "from-env");
    assert.deepEqual(fromEnv.labels, ["docker", "linux", "region=eu"]);
    assert.equal(fromEnv.capacity, 4);
    assert.equal(fromEnv.workDir, "/tmp/env-state/work");

    const flagged = loadAgentConfig(
      ["--url", "127.0.0.1:7171", "--token=flag-token", "--name", "from-flag", "--labels", "gpu", "--capacity", "8", "--state-dir", "/tmp/flag-state", "--work-dir", "/tmp/w"],
      env,
    );
    assert.equal(flagged.url, "127.0.0.1:7171");
    assert.equal(flagged.token, "flag-token");
    assert.equal(flagged.name, "from-flag");
    assert.deepEqual(flagged.labels, ["gpu"]);
    assert.equal(flagged.capacity, 8);
    assert.equal(flagged.stateDir, "/tmp/flag-state");
    assert.equal(flagged.workDir, "/tmp/w");
  });

  test("a grpc:// or http:// prefix is accepted, TLS schemes are not", () => {
    assert.equal(loadAgentConfig(["--url", "grpc://127.0.0.1:7071"], {}).url, "127.0.0.1:7071");
    assert.throws(() => loadAgentConfig(["--url", "https://example.com:443"], {}), ConfigError);
  });

  test("bad values are refused with a message naming the option", () => {
    for (const capacity of ["0", "1001", "-1", "two", "1.5"]) {
      assert.throws(() => loadAgentConfig(["--capacity", capacity], {}), (error: Error) => {
        assert.ok(error instanceof ConfigError);
        assert.match(error.message, /--capacity \/ MUSTER_CAPACITY/);
        return true;
      });
    }
    assert.throws(() => loadAgentConfig([], { MUSTER_CAPACITY: "0" }), ConfigError);
    assert.throws(() => loadAgentConfig(["--labels", "ok,not ok"], {}), /label "not ok"/);
    assert.throws(() => loadAgentConfig(["--name", "-bad"], {}), ConfigError);
    assert.throws(() => loadAgentConfig(["--url", "nowhere"], {}), /host:port/);
    assert.throws(() => loadAgentConfig(["--max-chunk-bytes", "10"], {}), ConfigError);
    assert.throws(() => loadAgentConfig(["--backoff-initial-ms", "500", "--backoff-max-ms", "100"], {}), ConfigError);
    assert.throws(() => loadAgentConfig(["--no-such-flag", "1"], {}), /unknown flag --no-such-flag/);
  });
});
