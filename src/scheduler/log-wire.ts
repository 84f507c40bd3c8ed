// The binary form of log chunks on a job's log channel (src/scheduler/job-events.ts).
// Live log fan-out carries every byte an agent writes to every replica, so the
// payload is the chunks' bytes as they are, behind a small fixed header per
// chunk: no base64, no JSON, no UTF-8 conversion. Decoding makes views into
// the payload, not copies. The job id is the channel's, so it is not repeated.
//
//   u8 version (1), u32 chunk count, then per chunk:
//   u32 attempt, u32 seq, u8 stream, f64 time (ms since the epoch), u32 length, bytes
//
// Integers are big-endian.

import type { LogChunkRecord, LogStreamName } from "../domain.ts";

const VERSION = 1;
const HEADER_BYTES = 5;
const CHUNK_HEADER_BYTES = 4 + 4 + 1 + 8 + 4;
const STREAM_CODES: Record<LogStreamName, number> = { stdout: 0, stderr: 1, system: 2 };
const STREAM_NAMES: readonly LogStreamName[] = ["stdout", "stderr", "system"];

export function encodeLogChunks(chunks: readonly LogChunkRecord[]): Buffer {
  let size = HEADER_BYTES;
  for (const chunk of chunks) size += CHUNK_HEADER_BYTES + chunk.data.byteLength;
  const out = Buffer.allocUnsafe(size);
  let at = out.writeUInt8(VERSION, 0);
  at = out.writeUInt32BE(chunks.length, at);
  for (const chunk of chunks) {
    at = out.writeUInt32BE(chunk.attempt, at);
    at = out.writeUInt32BE(chunk.seq, at);
    at = out.writeUInt8(STREAM_CODES[chunk.stream], at);
    at = out.writeDoubleBE(chunk.time.getTime(), at);
    at = out.writeUInt32BE(chunk.data.byteLength, at);
    out.set(chunk.data, at);
    at += chunk.data.byteLength;
  }
  return out;
}

/** The chunks of a payload; their data are views into it. Throws on a payload that is not one. */
export function decodeLogChunks(jobId: string, payload: Uint8Array): LogChunkRecord[] {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const fail = (why: string): never => {
    throw new Error(`malformed log payload on the channel of job ${jobId}: ${why}`);
  };
  if (payload.byteLength < HEADER_BYTES || view.getUint8(0) !== VERSION) fail("unknown version");
  const count = view.getUint32(1);
  const chunks: LogChunkRecord[] = [];
  let at = HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    if (at + CHUNK_HEADER_BYTES > payload.byteLength) fail("truncated chunk header");
    const stream = STREAM_NAMES[view.getUint8(at + 8)] ?? fail("unknown stream");
    const length = view.getUint32(at + 17);
    const start = at + CHUNK_HEADER_BYTES;
    if (start + length > payload.byteLength) fail("truncated chunk data");
    chunks.push({
      jobId,
      attempt: view.getUint32(at),
      seq: view.getUint32(at + 4),
      stream,
      time: new Date(view.getFloat64(at + 9)),
      data: new Uint8Array(payload.buffer, payload.byteOffset + start, length),
    });
    at = start + length;
  }
  if (at !== payload.byteLength) fail("trailing bytes");
  return chunks;
}
