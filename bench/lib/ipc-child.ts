// The child side of the benchmark's control channel: a load generator or a
// simulated fleet registers one handler per command; the parent (child.ts)
// calls them by name and gets their result or their error back. Events the
// child reports unasked go out as { event, ... }.

type Handler = (args: any) => Promise<unknown> | unknown;

interface CommandMessage {
  type: string;
  id: number;
  args?: unknown;
}

export function serveCommands(handlers: Record<string, Handler>): void {
  if (typeof process.send !== "function") throw new Error("this script is started by the benchmark harness (it needs an IPC channel)");
  process.on("message", (message: CommandMessage) => {
    if (typeof message?.type !== "string" || message.type.startsWith("__")) return;
    const handler = handlers[message.type];
    Promise.resolve()
      .then(() => {
        if (handler === undefined) throw new Error(`unknown command ${message.type}`);
        return handler(message.args);
      })
      .then(
        (result) => process.send?.({ type: "__reply", id: message.id, result }),
        (error: Error) => process.send?.({ type: "__reply", id: message.id, error: error?.stack ?? String(error) }),
      );
  });
  // The parent's disconnect (or death) ends the child: nothing outlives a run.
  process.on("disconnect", () => process.exit(0));
  // The probe unrefs the channel (it must not keep a server alive); a command
  // server lives for its commands, so it holds the channel until disconnect.
  process.channel?.ref();
  process.send({ type: "__ready" });
}

export function emit(event: string, fields: Record<string, unknown> = {}): void {
  process.send?.({ event, ...fields });
}
