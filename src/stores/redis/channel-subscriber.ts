// Pub/sub on a dedicated connection (a subscribed connection can run no other
// command). Owns the map of channel -> handlers: Redis is subscribed to a
// channel while at least one handler listens on it.
//
// Messages are taken as Buffers ('messageBuffer'), never as ioredis's
// strings: a byte handler (log chunks) gets the bytes as they arrived, and a
// text handler gets them decoded once per message. Listening to 'message'
// would make ioredis decode every payload, log chunks included.
//
// Byte channels are also delivered locally (see byte-fanout.ts): a byte
// message carries its publisher's origin in front, and the copy that comes
// back from Redis to the replica that published it is dropped, since that
// replica's handlers had it directly.

import type { Redis } from "ioredis";
import type { Logger } from "../../logger.ts";
import type { Unsubscribe } from "../lease-store.ts";

/** Bytes in front of every byte message: which store instance published it. */
export const ORIGIN_BYTES = 8;

export interface ChannelSubscriber {
  subscribe(channel: string, handler: (message: string) => void): Promise<Unsubscribe>;
  /** Byte messages from other origins than `origin`, without the origin in front. */
  subscribeBytes(channel: string, handler: (message: Uint8Array) => void): Promise<Unsubscribe>;
  /** Hands a payload to this connection's byte handlers of the channel directly, as Redis would. */
  dispatchBytesLocally(channel: string, payload: Uint8Array): void;
  /**
   * A token that stays the same while Redis certainly counts this connection
   * among the channel's subscribers (the SUBSCRIBE was confirmed, no
   * UNSUBSCRIBE was sent, the connection has not dropped since); null when
   * that is not certain.
   */
  confirmedSubscription(channel: string): object | null;
}

type Listener = { text: true; handler: (message: string) => void } | { text: false; handler: (message: Uint8Array) => void };

interface ChannelEntry {
  listeners: Set<Listener>;
  subscribed: Promise<unknown>;
  /** The connection generation in which Redis confirmed the SUBSCRIBE; null until then. */
  confirmedIn: object | null;
}

export function createChannelSubscriber(connection: Redis, origin: Uint8Array, logger: Logger): ChannelSubscriber {
  // `subscribed` settles when Redis confirmed the SUBSCRIBE; later callers wait on it too.
  const channels = new Map<string, ChannelEntry>();
  // A new object each time the connection drops: ioredis re-subscribes on
  // reconnect, but when Redis has done so is not known here.
  let generation = {};
  connection.on("close", () => {
    generation = {};
  });

  const deliver = (channel: string, listeners: Set<Listener>, message: Buffer) => {
    let text: string | undefined;
    let bytes: Uint8Array | undefined;
    for (const listener of listeners) {
      try {
        if (listener.text) {
          listener.handler((text ??= message.toString()));
        } else {
          if (message.byteLength < ORIGIN_BYTES) throw new Error("a byte message without its origin");
          if (bytes === undefined) {
            if (Buffer.compare(message.subarray(0, ORIGIN_BYTES), origin) === 0) continue; // had it directly
            bytes = message.subarray(ORIGIN_BYTES);
          }
          listener.handler(bytes);
        }
      } catch (error) {
        logger.error({ err: error, channel }, "pub/sub handler threw");
      }
    }
  };

  connection.on("messageBuffer", (channelBytes: Buffer, message: Buffer) => {
    const channel = channelBytes.toString();
    const listeners = channels.get(channel)?.listeners;
    if (listeners !== undefined) deliver(channel, listeners, message);
  });

  const add = async (channel: string, listener: Listener): Promise<Unsubscribe> => {
    let entry = channels.get(channel);
    if (!entry) {
      const created: ChannelEntry = { listeners: new Set(), subscribed: Promise.resolve(), confirmedIn: null };
      const during = generation;
      created.subscribed = connection.subscribe(channel).then((result) => {
        if (during === generation) created.confirmedIn = during;
        return result;
      });
      entry = created;
      channels.set(channel, entry);
    }
    entry.listeners.add(listener);
    const unsubscribe: Unsubscribe = async () => {
      const current = channels.get(channel);
      if (!current?.listeners.delete(listener) || current.listeners.size > 0) return;
      channels.delete(channel);
      current.confirmedIn = null;
      if (connection.status === "ready") await connection.unsubscribe(channel);
    };
    try {
      await entry.subscribed;
    } catch (error) {
      await unsubscribe();
      throw error;
    }
    return unsubscribe;
  };

  return {
    // A listener object per call, so subscribing the same function twice needs two unsubscribes.
    subscribe: (channel, handler) => add(channel, { text: true, handler }),
    subscribeBytes: (channel, handler) => add(channel, { text: false, handler }),
    dispatchBytesLocally(channel, payload) {
      const listeners = channels.get(channel)?.listeners;
      if (listeners === undefined) return;
      for (const listener of listeners) {
        if (listener.text) continue;
        // Asynchronously, as a message from Redis would arrive.
        queueMicrotask(() => {
          try {
            listener.handler(payload);
          } catch (error) {
            logger.error({ err: error, channel }, "pub/sub handler threw");
          }
        });
      }
    },
    confirmedSubscription(channel) {
      const entry = channels.get(channel);
      // The entry itself: after an UNSUBSCRIBE the channel gets a new one, if any.
      return entry !== undefined && entry.confirmedIn === generation ? entry : null;
    },
  };
}
