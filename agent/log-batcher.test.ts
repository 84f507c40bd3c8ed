import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { AgentLogChunk } from "../gen/muster/v1/agent_pb.js";
import { LogStream } from "../gen/muster/v1/job_pb.js";
import { createLogBatcher, type LogBatcherOptions } from "./log-batcher.ts";

function batcher(overrides: Partial<LogBatcherOptions> = {}) {
  const sent: AgentLogChunk[] = [];
  const b = createLogBatcher({
    jobId: "job-1",
    attempt: 2,
    maxChunkBytes: 8,
    flushMs: 20,
    onChunk: (chunk) => sent.push(chunk),
    ...overrides,
  });
  return { b, sent };
}

const bytes = (text: string) => Buffer.from(text);

describe("log batcher", () => {
  test("seq runs from 1 without gaps and no chunk exceeds the limit", () => {
    const { b, sent } = batcher();
    b.write(LogStream.STDOUT, bytes("0123456789abcdefghij"));
    b.write(LogStream.STDOUT, bytes("klmno"));
    b.flush();
    assert.deepEqual(sent.map((c) => c.seq), [1n, 2n, 3n, 4n]);
    for (const chunk of sent) {
      assert.ok(chunk.data.byteLength <= 8);
      assert.equal(chunk.jobId, "job-1");
      assert.equal(chunk.attempt, 2);
      assert.ok(chunk.time !== undefined);
    }
    assert.equal(Buffer.concat(sent.map((c) => c.data)).toString(), "0123456789abcdefghijklmno");
    assert.equal(b.lastSeq, 4n);
    b.close();
  });

  test("bytes pass through untouched: NUL and invalid UTF-8", () => {
    const { b, sent } = batcher({ maxChunkBytes: 1024 });
    const raw = Buffer.from([0x00, 0xff, 0xfe, 0xc3, 0x28, 0x0a]);
    b.write(LogStream.STDERR, raw);
    b.close();
    assert.equal(sent.length, 1);
    assert.deepEqual(Buffer.from(sent[0].data), raw);
    assert.equal(sent[0].stream, LogStream.STDERR);
  });

  test("a change of stream seals the buffer first", () => {
    const { b, sent } = batcher({ maxChunkBytes: 1024 });
    b.write(LogStream.STDOUT, bytes("out1 "));
    b.write(LogStream.STDOUT, bytes("out2 "));
    b.write(LogStream.STDERR, bytes("err"));
    b.write(LogStream.STDOUT, bytes("out3"));
    b.close();
    assert.deepEqual(
      sent.map((c) => [c.seq, c.stream, Buffer.from(c.data).toString()]),
      [
        [1n, LogStream.STDOUT, "out1 out2 "],
        [2n, LogStream.STDERR, "err"],
        [3n, LogStream.STDOUT, "out3"],
      ],
    );
  });

  test("buffered output is sent after flushMs without further writes", async () => {
    const { b, sent } = batcher({ maxChunkBytes: 1024, flushMs: 30 });
    b.write(LogStream.STDOUT, bytes("tick"));
    assert.equal(sent.length, 0);
    await new Promise((resolve) => setTimeout(resolve, 80));
    assert.equal(sent.length, 1);
    assert.equal(Buffer.from(sent[0].data).toString(), "tick");
    b.close();
  });

  test("acks trim the outbox; the unacked rest comes back in order for a resend", () => {
    const { b } = batcher({ maxChunkBytes: 4 });
    b.write(LogStream.STDOUT, bytes("aaaabbbbccccdddd"));
    assert.equal(b.outboxBytes, 16);
    assert.deepEqual(b.unacked().map((c) => c.seq), [1n, 2n, 3n, 4n]);
    b.ack(2n);
    assert.equal(b.ackedSeq, 2n);
    assert.equal(b.outboxBytes, 8);
    assert.deepEqual(b.unacked().map((c) => [c.seq, Buffer.from(c.data).toString()]), [[3n, "cccc"], [4n, "dddd"]]);
    b.ack(1n); // stale ack: no effect
    assert.equal(b.ackedSeq, 2n);
    b.ack(4n);
    assert.deepEqual(b.unacked(), []);
    assert.equal(b.outboxBytes, 0);
    b.close();
  });

  test("a lower limit (the server's) re-cuts what is buffered", () => {
    const { b, sent } = batcher({ maxChunkBytes: 1024 });
    b.write(LogStream.STDOUT, bytes("0123456789"));
    b.setMaxChunkBytes(4);
    b.write(LogStream.STDOUT, bytes("ab"));
    b.close();
    assert.deepEqual(sent.map((c) => Buffer.from(c.data).toString()), ["0123", "4567", "89ab"]);
  });

  test("drop() forgets everything and emits nothing more", async () => {
    const { b, sent } = batcher({ maxChunkBytes: 1024, flushMs: 10 });
    b.write(LogStream.STDOUT, bytes("lost"));
    b.drop();
    b.write(LogStream.STDOUT, bytes("after"));
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(sent.length, 0);
    assert.deepEqual(b.unacked(), []);
  });

  test("split re-cuts the outbox from the first chunk over the limit and numbers on from it", () => {
    const { b, sent } = batcher({ maxChunkBytes: 8 });
    b.write(LogStream.STDOUT, bytes("aaaa"));
    b.flush();
    b.write(LogStream.STDOUT, bytes("bbbbbbbb"));
    b.write(LogStream.STDOUT, bytes("cccccccc"));
    b.flush();
    assert.deepEqual(sent.map((c) => c.seq), [1n, 2n, 3n]);
    const recut = b.split(4);
    assert.deepEqual(recut.map((c) => [c.seq, Buffer.from(c.data).toString()]), [
      [2n, "bbbb"],
      [3n, "bbbb"],
      [4n, "cccc"],
      [5n, "cccc"],
    ]);
    assert.equal(b.lastSeq, 5n);
    assert.deepEqual(b.unacked().map((c) => c.seq), [1n, 2n, 3n, 4n, 5n]);
    b.write(LogStream.STDOUT, bytes("dddddd"));
    b.flush();
    assert.deepEqual(sent.slice(3).map((c) => [c.seq, Buffer.from(c.data).toString()]), [
      [6n, "dddd"],
      [7n, "dd"],
    ]);
    assert.deepEqual(b.split(4), [], "nothing over the limit: nothing re-cut");
    b.close();
  });
});
