// Response compression for the API plane. connect-node's defaults compress
// every response message over 1 KiB with zlib's default level (gzip 6, and
// brotli at quality 11, its slowest) on the replica's CPU. The bulk of what
// the API sends is log chunks to followers, each compressed once per
// follower, so responses use the fastest settings instead: on log text, gzip
// level 1 costs about half of level 6 for nearly the same size. Requests are
// decompressed as before; both encodings stay accepted, and a client that
// asks for none gets none.

import type { Compression } from "@connectrpc/connect/protocol";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { promisify } from "node:util";
import * as zlib from "node:zlib";

const gzip = promisify(zlib.gzip);
const brotliCompress = promisify(zlib.brotliCompress);

/** A Buffer as a Uint8Array over its own ArrayBuffer, as connect's Compression returns. */
function ownBytes(bytes: Buffer): Uint8Array<ArrayBuffer> {
  return bytes.buffer instanceof ArrayBuffer ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength) : new Uint8Array(bytes);
}

/** Up to this size a message is compressed on the event loop: quicker than a hop to the thread pool and back. */
const SYNC_MAX_BYTES = 256 * 1024;

export const fastGzip: Compression = {
  name: compressionGzip.name,
  compress: async (bytes) =>
    ownBytes(
      bytes.byteLength <= SYNC_MAX_BYTES
        ? zlib.gzipSync(bytes, { level: zlib.constants.Z_BEST_SPEED })
        : await gzip(bytes, { level: zlib.constants.Z_BEST_SPEED }),
    ),
  decompress: compressionGzip.decompress,
};

export const fastBrotli: Compression = {
  name: compressionBrotli.name,
  compress: async (bytes) => ownBytes(await brotliCompress(bytes, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 1 } })),
  decompress: compressionBrotli.decompress,
};

/** In order of preference. */
export const API_COMPRESSION: Compression[] = [fastGzip, fastBrotli];
