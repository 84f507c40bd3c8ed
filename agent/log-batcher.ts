// One attempt's output, cut into numbered log chunks and kept until the server
// acknowledges them. Bytes stay raw Buffers end to end (scripts print NUL and
// invalid UTF-8; decoding would corrupt them).
//
// A chunk is sealed when the buffer reaches the chunk limit, when the stream
// kind changes, when the flush timer fires (log-flush-ms after the first
// unsent byte), or on flush(). Sealed chunks get seq 1, 2, 3... without gaps,
// go to onChunk at once, and stay in the outbox until ack(seq) covers them.
// All state here is owned by the batcher; the attempt drives it.
//
// Lifecycle: open (write/flush/ack) -> close() (final flush, timer cleared;
// acks still trim) or drop() (outbox discarded, nothing more is emitted).

import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { AgentLogChunkSchema, type AgentLogChunk } from "../gen/muster/v1/agent_pb.js";
import { LogStream } from "../gen/muster/v1/job_pb.js";

export interface LogBatcherOptions {
  jobId: string;
  attempt: number;
  maxChunkBytes: number;
  flushMs: number;
  /** Called with every sealed chunk, in seq order; it is already in the outbox. */
  onChunk: (chunk: AgentLogChunk) => void;
}

export interface LogBatcher {
  write(stream: LogStream, data: Uint8Array): void;
  /** Seals whatever is buffered. */
  flush(): void;
  /** The server stored every chunk up to and including seq. */
  ack(seq: bigint): void;
  /** Chunks not yet acknowledged, in seq order: what a reconnect resends. */
  unacked(): AgentLogChunk[];
  /** Lowers (or raises) the chunk limit, e.g. to the server's Welcome.max_chunk_bytes. */
  setMaxChunkBytes(bytes: number): void;
  /**
   * The server refused a chunk as too large: lowers the limit and re-cuts the
   * outbox from the first chunk over it, numbering on from that chunk's seq
   * (the server stores chunks contiguously, so it holds none past the refused
   * one). Returns the re-cut chunks, to be sent again; empty if none was over.
   */
  split(bytes: number): AgentLogChunk[];
  close(): void;
  drop(): void;
  /** Seq of the last sealed chunk, 0n if none. */
  readonly lastSeq: bigint;
  /** Highest acknowledged seq, 0n if none. */
  readonly ackedSeq: bigint;
  /** Data bytes held in the outbox, for backpressure. */
  readonly outboxBytes: number;
}

export function createLogBatcher(options: LogBatcherOptions): LogBatcher {
  const { jobId, attempt, flushMs, onChunk } = options;
  let maxChunkBytes = options.maxChunkBytes;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let pendingStream: LogStream = LogStream.UNSPECIFIED;
  let timer: NodeJS.Timeout | null = null;
  let lastSeq = 0n;
  let ackedSeq = 0n;
  let outbox: AgentLogChunk[] = [];
  let outboxBytes = 0;
  let state: "open" | "closed" | "dropped" = "open";

  function clearTimer(): void {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
  }

  function seal(): void {
    clearTimer();
    if (pendingBytes === 0) return;
    const data = pending.length === 1 ? pending[0] : Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    lastSeq++;
    const chunk = create(AgentLogChunkSchema, { jobId, attempt, seq: lastSeq, stream: pendingStream, data, time: timestampNow() });
    outbox.push(chunk);
    outboxBytes += data.byteLength;
    onChunk(chunk);
  }

  function write(stream: LogStream, data: Uint8Array): void {
    if (state !== "open" || data.byteLength === 0) return;
    if (stream !== pendingStream) {
      seal();
      pendingStream = stream;
    }
    let offset = 0;
    while (offset < data.byteLength) {
      const take = Math.min(maxChunkBytes - pendingBytes, data.byteLength - offset);
      // A copy: the caller's buffer may be pooled and reused after we return.
      pending.push(Buffer.from(data.subarray(offset, offset + take)));
      pendingBytes += take;
      offset += take;
      if (pendingBytes >= maxChunkBytes) seal();
    }
    if (pendingBytes > 0 && timer === null) {
      timer = setTimeout(seal, flushMs);
      timer.unref();
    }
  }

  return {
    write,
    flush() {
      if (state === "open") seal();
    },
    ack(seq) {
      if (seq <= ackedSeq) return;
      ackedSeq = seq > lastSeq ? lastSeq : seq;
      let trim = 0;
      while (trim < outbox.length && outbox[trim].seq <= ackedSeq) {
        outboxBytes -= outbox[trim].data.byteLength;
        trim++;
      }
      if (trim > 0) outbox = outbox.slice(trim);
    },
    unacked() {
      return [...outbox];
    },
    setMaxChunkBytes(bytes) {
      if (!(bytes >= 1)) throw new RangeError(`max chunk bytes must be positive, got ${bytes}`);
      maxChunkBytes = bytes;
      if (pendingBytes >= maxChunkBytes) {
        // Re-cut what is buffered so no chunk exceeds the new limit.
        const buffered = Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        write(pendingStream, buffered);
      }
    },
    split(bytes) {
      if (!(bytes >= 1)) throw new RangeError(`max chunk bytes must be positive, got ${bytes}`);
      const first = outbox.findIndex((chunk) => chunk.data.byteLength > bytes);
      if (first === -1) {
        if (bytes < maxChunkBytes) this.setMaxChunkBytes(bytes);
        return [];
      }
      const kept = outbox.slice(0, first);
      const recut: AgentLogChunk[] = [];
      let seq = outbox[first].seq;
      for (const chunk of outbox.slice(first)) {
        for (let offset = 0; offset < chunk.data.byteLength; offset += bytes) {
          const data = chunk.data.subarray(offset, Math.min(offset + bytes, chunk.data.byteLength));
          recut.push(create(AgentLogChunkSchema, { jobId, attempt, seq, stream: chunk.stream, data, time: chunk.time }));
          seq++;
        }
      }
      lastSeq = seq - 1n;
      outbox = [...kept, ...recut];
      if (bytes < maxChunkBytes) this.setMaxChunkBytes(bytes);
      return recut;
    },
    close() {
      if (state !== "open") return;
      seal();
      state = "closed";
    },
    drop() {
      clearTimer();
      state = "dropped";
      pending = [];
      pendingBytes = 0;
      outbox = [];
      outboxBytes = 0;
    },
    get lastSeq() {
      return lastSeq;
    },
    get ackedSeq() {
      return ackedSeq;
    },
    get outboxBytes() {
      return outboxBytes;
    },
  };
}
