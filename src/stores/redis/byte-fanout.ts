// Publishing bytes (log chunks) to the replicas that listen, and only to them.
//
// Handlers on this replica get the payload directly, never through Redis.
// Redis gets it only when another replica subscribes to the channel: PUBSUB
// NUMSUB, sent with each publish, counts the channel's subscribers, and
// this replica's own subscription is subtracted
// only when it is certainly among them (channel-subscriber.ts). So a job's
// log bytes cross Redis once per chunk when someone on another replica
// follows it, and not at all otherwise.
//
// Nothing is lost for a follower that subscribes meanwhile. Redis runs one
// command at a time: if the follower's SUBSCRIBE came before the NUMSUB, the
// count includes it and the PUBLISH follows; if it came after, the follower
// did not get those chunks live. Chunks are published while they are being
// stored, so they may not be in Postgres yet when it reads; the reader
// notices the hole (the next live chunk's seq, the job's end, or its
// periodic recheck) and reads it from Postgres once stored
// (src/scheduler/log-reader.ts).

import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { ORIGIN_BYTES, type ChannelSubscriber } from "./channel-subscriber.ts";

/** Identifies this store instance's byte messages on the way back from Redis. */
export function newOrigin(): Buffer {
  return randomBytes(ORIGIN_BYTES);
}

export function createBytePublisher(
  commands: Redis,
  subscriber: ChannelSubscriber,
  origin: Buffer,
): (channel: string, payload: Uint8Array) => Promise<void> {
  return async (channel, payload) => {
    subscriber.dispatchBytesLocally(channel, payload);
    const before = subscriber.confirmedSubscription(channel);
    const reply = (await commands.call("PUBSUB", "NUMSUB", channel)) as [unknown, unknown];
    const self = before !== null && subscriber.confirmedSubscription(channel) === before ? 1 : 0;
    if (Number(reply[1]) <= self) return;
    await commands.publish(channel, Buffer.concat([origin, payload]));
  };
}
