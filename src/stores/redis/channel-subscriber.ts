// Pub/sub on a dedicated connection (a subscribed connection can run no other
// command). Owns the map of channel -> handlers: Redis is subscribed to a
// channel while at least one handler listens on it.

import type { Redis } from "ioredis";
import type { Logger } from "../../logger.ts";
import type { Unsubscribe } from "../lease-store.ts";

export interface ChannelSubscriber {
  subscribe(channel: string, handler: (message: string) => void): Promise<Unsubscribe>;
}

export function createChannelSubscriber(connection: Redis, logger: Logger): ChannelSubscriber {
  // `subscribed` settles when Redis confirmed the SUBSCRIBE; later callers wait on it too.
  const channels = new Map<string, { handlers: Set<(message: string) => void>; subscribed: Promise<unknown> }>();

  connection.on("message", (channel: string, message: string) => {
    for (const handler of channels.get(channel)?.handlers ?? []) {
      try {
        handler(message);
      } catch (error) {
        logger.error({ err: error, channel }, "pub/sub handler threw");
      }
    }
  });

  return {
    async subscribe(channel, handler) {
      let entry = channels.get(channel);
      if (!entry) {
        entry = { handlers: new Set(), subscribed: connection.subscribe(channel) };
        channels.set(channel, entry);
      }
      // A wrapper per call, so subscribing the same function twice needs two unsubscribes.
      const listener = (message: string) => handler(message);
      entry.handlers.add(listener);
      const unsubscribe: Unsubscribe = async () => {
        const current = channels.get(channel);
        if (!current?.handlers.delete(listener) || current.handlers.size > 0) return;
        channels.delete(channel);
        if (connection.status === "ready") await connection.unsubscribe(channel);
      };
      try {
        await entry.subscribed;
      } catch (error) {
        await unsubscribe();
        throw error;
      }
      return unsubscribe;
    },
  };
}
