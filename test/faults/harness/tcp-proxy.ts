// A loopback TCP proxy that a fault scenario puts between two processes
// (agents and the agent plane, the server and Postgres or Redis) to break
// the connection on purpose:
//
//   open       bytes flow (after `delayMs`, at most `rateBytesPerSec`)
//   blackhole  bytes are held, not delivered, as in a network partition;
//              new connections are accepted but get nothing through. Going
//              back to open delivers what was held, as TCP would after a heal.
//   refuse     new connections are reset at once (the peer is "down").
//   reset()    resets (RST) every current connection.
//
// Each direction keeps a queue; when more than HIGH_WATER bytes wait in it,
// the sending socket stops being read, so a throttled reader pushes back on
// the writer exactly as a slow TCP peer would. All state is owned here;
// close() leaves no socket or timer behind.

import net from "node:net";

/** Bytes queued in one direction before the source socket is paused. */
const HIGH_WATER = 64 * 1024;
/** Throttled directions send at most this many bytes per tick. */
const THROTTLE_TICK_MS = 50;

export type ProxyMode = "open" | "blackhole" | "refuse";

export interface TcpProxy {
  readonly port: number;
  /** host:port to hand to whoever connects through the proxy. */
  readonly address: string;
  readonly mode: ProxyMode;
  /** Connections currently proxied. */
  readonly connections: number;
  setMode(mode: ProxyMode): void;
  /** Resets every current connection (new ones are still accepted unless refusing). */
  reset(): void;
  /** Added latency, both directions. */
  setDelay(ms: number): void;
  /** Upstream -> client bandwidth limit; 0: none. */
  setDownstreamRate(bytesPerSec: number): void;
  /** Points new connections at another upstream port (a restarted server). */
  setTarget(port: number): void;
  close(): Promise<void>;
}

interface Item {
  data: Buffer;
  dueAt: number;
}

interface Direction {
  from: net.Socket;
  to: net.Socket;
  queue: Item[];
  queuedBytes: number;
  timer: NodeJS.Timeout | null;
  throttled: boolean;
  /** Bytes already sent in the current throttle tick. */
  tickBytes: number;
  tickStart: number;
}

export async function startTcpProxy(targetPort: number, options: { host?: string } = {}): Promise<TcpProxy> {
  const host = options.host ?? "127.0.0.1";
  let target = targetPort;
  let mode: ProxyMode = "open";
  let delayMs = 0;
  let downRate = 0;
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket; directions: Direction[] }>();

  function pump(direction: Direction): void {
    if (direction.timer !== null) {
      clearTimeout(direction.timer);
      direction.timer = null;
    }
    if (mode === "blackhole") return;
    const now = Date.now();
    while (direction.queue.length > 0) {
      const item = direction.queue[0];
      if (item.dueAt > now) {
        schedule(direction, item.dueAt - now);
        return;
      }
      let data = item.data;
      if (direction.throttled && downRate > 0) {
        if (now - direction.tickStart >= THROTTLE_TICK_MS) {
          direction.tickStart = now;
          direction.tickBytes = 0;
        }
        const budget = Math.floor((downRate * THROTTLE_TICK_MS) / 1000) - direction.tickBytes;
        if (budget <= 0) {
          schedule(direction, THROTTLE_TICK_MS - (now - direction.tickStart));
          return;
        }
        if (data.byteLength > budget) {
          item.data = data.subarray(budget);
          data = data.subarray(0, budget);
        } else {
          direction.queue.shift();
        }
        direction.tickBytes += data.byteLength;
      } else {
        direction.queue.shift();
      }
      direction.queuedBytes -= data.byteLength;
      if (!direction.to.destroyed) direction.to.write(data);
    }
    if (direction.queuedBytes < HIGH_WATER && direction.from.isPaused()) direction.from.resume();
  }

  function schedule(direction: Direction, ms: number): void {
    direction.timer = setTimeout(() => pump(direction), Math.max(1, ms));
    direction.timer.unref();
    if (direction.queuedBytes < HIGH_WATER && direction.from.isPaused()) direction.from.resume();
  }

  function wire(from: net.Socket, to: net.Socket, throttled: boolean): Direction {
    const direction: Direction = { from, to, queue: [], queuedBytes: 0, timer: null, throttled, tickBytes: 0, tickStart: 0 };
    from.on("data", (data: Buffer) => {
      direction.queue.push({ data, dueAt: Date.now() + delayMs });
      direction.queuedBytes += data.byteLength;
      if (direction.queuedBytes >= HIGH_WATER) from.pause();
      pump(direction);
    });
    return direction;
  }

  const server = net.createServer((client) => {
    if (mode === "refuse") {
      client.resetAndDestroy();
      return;
    }
    client.pause();
    const upstream = net.connect({ host, port: target });
    const pair = { client, upstream, directions: [] as Direction[] };
    pairs.add(pair);
    const teardown = (hard: boolean) => {
      if (!pairs.delete(pair)) return;
      for (const direction of pair.directions) if (direction.timer !== null) clearTimeout(direction.timer);
      if (hard) {
        if (!client.destroyed) client.resetAndDestroy();
        if (!upstream.destroyed) upstream.resetAndDestroy();
      } else {
        client.end();
        upstream.end();
        // A half-closed socket whose reading is paused can keep the event
        // loop busy; whatever the peer did not take within a second is dropped.
        setTimeout(() => {
          client.destroy();
          upstream.destroy();
        }, 1000).unref();
      }
    };
    client.on("error", () => teardown(true));
    upstream.on("error", () => teardown(true));
    client.on("close", () => teardown(false));
    upstream.on("close", () => teardown(false));
    upstream.once("connect", () => {
      pair.directions = [wire(client, upstream, false), wire(upstream, client, true)];
      client.resume();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;

  function resetAll(): void {
    for (const pair of [...pairs]) {
      pairs.delete(pair);
      for (const direction of pair.directions) if (direction.timer !== null) clearTimeout(direction.timer);
      if (!pair.client.destroyed) pair.client.resetAndDestroy();
      if (!pair.upstream.destroyed) pair.upstream.resetAndDestroy();
    }
  }

  return {
    port,
    address: `127.0.0.1:${port}`,
    get mode() {
      return mode;
    },
    get connections() {
      return pairs.size;
    },
    setMode(next) {
      mode = next;
      if (mode !== "blackhole") for (const pair of pairs) for (const direction of pair.directions) pump(direction);
    },
    reset: resetAll,
    setDelay(ms) {
      delayMs = ms;
    },
    setDownstreamRate(bytesPerSec) {
      downRate = bytesPerSec;
    },
    setTarget(next) {
      target = next;
    },
    async close() {
      resetAll();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
