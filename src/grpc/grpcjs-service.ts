// Builds @grpc/grpc-js service definitions from protobuf-es descriptors, so
// the agent plane (grpc-js server) and the agent (grpc-js client) use the same
// generated code as the API plane: one codegen, binary serializers from
// @bufbuild/protobuf.

import { fromBinary, toBinary, type DescMessage, type DescService, type MessageShape } from "@bufbuild/protobuf";
import type { MethodDefinition, ServiceDefinition } from "@grpc/grpc-js";

function serializer<Desc extends DescMessage>(schema: Desc) {
  return (message: MessageShape<Desc>): Buffer => {
    const bytes = toBinary(schema, message);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

/**
 * grpc-js answers INTERNAL when a deserializer throws. A frame that does not
 * parse is the client's fault (INVALID_ARGUMENT), so the deserializer hands
 * the handler this marker instead, and the handler refuses it.
 */
export interface MalformedMessage {
  readonly malformed: string;
}

const MALFORMED = new WeakSet<object>();

export function isMalformed(message: unknown): message is MalformedMessage {
  return typeof message === "object" && message !== null && MALFORMED.has(message);
}

function deserializer<Desc extends DescMessage>(schema: Desc) {
  return (bytes: Buffer): MessageShape<Desc> | MalformedMessage => {
    try {
      return fromBinary(schema, bytes);
    } catch (error) {
      const marker = { malformed: `malformed ${schema.typeName}: ${(error as Error).message}` };
      MALFORMED.add(marker);
      return marker;
    }
  };
}

/** The grpc-js definition of a protobuf-es service, keyed by the method's local name (e.g. "connect"). */
export function grpcJsServiceDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: serializer(method.input) as (value: unknown) => Buffer,
      requestDeserialize: deserializer(method.input),
      responseSerialize: serializer(method.output) as (value: unknown) => Buffer,
      responseDeserialize: deserializer(method.output),
      originalName: method.name,
    };
  }
  return definition as ServiceDefinition;
}
