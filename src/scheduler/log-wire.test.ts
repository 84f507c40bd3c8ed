import assert from "node:assert/strict";
import { test } from "node:test";
import type { LogChunkRecord } from "../domain.ts";
import { decodeLogChunks, encodeLogChunks } from "./log-wire.ts";

const jobId = "0b6f3c1e-6a57-4c57-9a62-3e7b3f3b0c11";

test("log chunks survive the wire byte for byte, with attempt, seq, stream and time", () => {
  const backing = new Uint8Array([7, 7, 0xff, 0x00, 0xc3, 7]);
  const chunks: LogChunkRecord[] = [
    { jobId, attempt: 1, seq: 1, stream: "stdout", data: backing.subarray(2, 5), time: new Date(1_700_000_000_123) },
    { jobId, attempt: 1, seq: 2, stream: "stderr", data: new Uint8Array(0), time: new Date(1_700_000_000_124) },
    { jobId, attempt: 2 ** 31 - 1, seq: 2 ** 31 - 1, stream: "system", data: Buffer.from("héllo\n"), time: new Date(0) },
  ];
  const decoded = decodeLogChunks(jobId, encodeLogChunks(chunks));
  assert.equal(decoded.length, 3);
  for (const [i, chunk] of decoded.entries()) {
    assert.ok(!Buffer.isBuffer(chunk.data), "a plain Uint8Array, as read from Postgres");
    assert.deepEqual([...chunk.data], [...chunks[i].data]);
    assert.deepEqual({ ...chunk, data: null }, { ...chunks[i], data: null });
  }
  assert.deepEqual(decodeLogChunks(jobId, encodeLogChunks([])), []);
});

test("a payload that is not a log batch is refused, not misread", () => {
  const good = encodeLogChunks([{ jobId, attempt: 1, seq: 1, stream: "stdout", data: Buffer.from("abc"), time: new Date() }]);
  assert.throws(() => decodeLogChunks(jobId, Buffer.from('[{"a":1}]')), /malformed/);
  assert.throws(() => decodeLogChunks(jobId, good.subarray(0, good.length - 1)), /truncated/);
  assert.throws(() => decodeLogChunks(jobId, Buffer.concat([good, Buffer.from([0])])), /trailing/);
});
