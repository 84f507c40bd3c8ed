// gRPC server reflection (grpc.reflection.v1 and v1alpha) from protobuf-es
// descriptors, so grpcurl and `buf curl` work against either plane with no
// proto files. The two versions have the same messages under different
// package names; one index answers both.
//
// Behaviour follows grpc-go's reflection server: a file is answered together
// with its transitive dependencies, each dependency only once per stream;
// lookup failures go in error_response and the stream stays open.

import type { DescExtension, DescFile, DescMessage, DescService } from "@bufbuild/protobuf";
import { toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ServiceImpl } from "@connectrpc/connect";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1Alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

export { ServerReflectionV1, ServerReflectionV1Alpha };

/** What reflection knows: the served services and every file they need. */
export interface ReflectionIndex {
  /** Fully-qualified names of the served services, sorted. */
  readonly serviceNames: readonly string[];
  fileByName(fileName: string): DescFile | undefined;
  fileContainingSymbol(symbol: string): DescFile | undefined;
  extension(containingType: string, fieldNumber: number): DescExtension | undefined;
  /** undefined: the message type is unknown. */
  extensionNumbers(containingType: string): number[] | undefined;
  /** The serialized FileDescriptorProto of a file. */
  fileBytes(file: DescFile): Uint8Array;
}

/** Builds the index over `services` (list_services answers exactly these) and the files they import. */
export function createReflectionIndex(services: readonly DescService[]): ReflectionIndex {
  const files = new Map<string, DescFile>();
  const symbols = new Map<string, DescFile>();
  const messages = new Map<string, DescMessage>();
  const extensions: DescExtension[] = [];
  const bytes = new Map<DescFile, Uint8Array>();

  const addFile = (file: DescFile): void => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    for (const dependency of file.dependencies) addFile(dependency);
    const scope = file.proto.package ? `${file.proto.package}.` : "";
    for (const service of file.services) {
      symbols.set(service.typeName, file);
      for (const method of service.methods) symbols.set(`${service.typeName}.${method.name}`, file);
    }
    for (const en of file.enums) addEnum(file, scope, en);
    for (const message of file.messages) addMessage(file, message);
    for (const extension of file.extensions) addExtension(file, extension);
  };
  const addEnum = (file: DescFile, scope: string, en: DescFile["enums"][number]): void => {
    symbols.set(en.typeName, file);
    // Enum values are scoped as siblings of their enum, as in protoc.
    for (const value of en.values) symbols.set(`${scope}${value.name}`, file);
  };
  const addMessage = (file: DescFile, message: DescMessage): void => {
    symbols.set(message.typeName, file);
    messages.set(message.typeName, message);
    for (const field of message.fields) symbols.set(`${message.typeName}.${field.name}`, file);
    for (const oneof of message.oneofs) symbols.set(`${message.typeName}.${oneof.name}`, file);
    for (const en of message.nestedEnums) addEnum(file, `${message.typeName}.`, en);
    for (const nested of message.nestedMessages) addMessage(file, nested);
    for (const extension of message.nestedExtensions) addExtension(file, extension);
  };
  const addExtension = (file: DescFile, extension: DescExtension): void => {
    symbols.set(extension.typeName, file);
    extensions.push(extension);
  };

  for (const service of services) addFile(service.file);

  return {
    serviceNames: [...new Set(services.map((service) => service.typeName))].sort(),
    fileByName: (fileName) => files.get(fileName),
    fileContainingSymbol: (symbol) => symbols.get(symbol.replace(/^\./, "")),
    extension: (containingType, fieldNumber) =>
      extensions.find(
        (ext) => ext.extendee.typeName === containingType.replace(/^\./, "") && ext.number === fieldNumber,
      ),
    extensionNumbers(containingType) {
      const typeName = containingType.replace(/^\./, "");
      if (!messages.has(typeName)) return undefined;
      return extensions.filter((ext) => ext.extendee.typeName === typeName).map((ext) => ext.number);
    },
    fileBytes(file) {
      let serialized = bytes.get(file);
      if (!serialized) bytes.set(file, (serialized = toBinary(FileDescriptorProtoSchema, file.proto)));
      return serialized;
    },
  };
}

/** The request oneof, shared by both versions. */
type MessageRequest =
  | { case: "fileByFilename"; value: string }
  | { case: "fileContainingSymbol"; value: string }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: "allExtensionNumbersOfType"; value: string }
  | { case: "listServices"; value: string }
  | { case: undefined; value?: undefined };

/** The response oneof, shared by both versions. */
type MessageResponse =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

function errorResponse(code: Code, message: string): MessageResponse {
  return { case: "errorResponse", value: { errorCode: code, errorMessage: message } };
}

/** The file first, then each transitive dependency this stream has not been sent yet. */
function fileResponse(index: ReflectionIndex, file: DescFile, sent: Set<string>): MessageResponse {
  const out: Uint8Array[] = [index.fileBytes(file)];
  sent.add(file.proto.name);
  const pending = [...file.dependencies];
  for (let dep = pending.shift(); dep; dep = pending.shift()) {
    if (sent.has(dep.proto.name)) continue;
    sent.add(dep.proto.name);
    out.push(index.fileBytes(dep));
    pending.push(...dep.dependencies);
  }
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
}

function answer(index: ReflectionIndex, request: MessageRequest, sent: Set<string>): MessageResponse {
  switch (request.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: index.serviceNames.map((name) => ({ name })) } };
    case "fileByFilename": {
      const file = index.fileByName(request.value);
      return file ? fileResponse(index, file, sent) : errorResponse(Code.NotFound, `file "${request.value}" not found`);
    }
    case "fileContainingSymbol": {
      const file = index.fileContainingSymbol(request.value);
      return file ? fileResponse(index, file, sent) : errorResponse(Code.NotFound, `symbol "${request.value}" not found`);
    }
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = request.value;
      const extension = index.extension(containingType, extensionNumber);
      return extension
        ? fileResponse(index, extension.file, sent)
        : errorResponse(Code.NotFound, `extension ${extensionNumber} of "${containingType}" not found`);
    }
    case "allExtensionNumbersOfType": {
      const numbers = index.extensionNumbers(request.value);
      return numbers
        ? { case: "allExtensionNumbersResponse", value: { baseTypeName: request.value, extensionNumber: numbers } }
        : errorResponse(Code.NotFound, `type "${request.value}" not found`);
    }
    default:
      return errorResponse(Code.InvalidArgument, "message_request is not set");
  }
}

export function reflectionServiceV1(index: ReflectionIndex): ServiceImpl<typeof ServerReflectionV1> {
  return {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: answer(index, request.messageRequest, sent) };
      }
    },
  };
}

export function reflectionServiceV1Alpha(index: ReflectionIndex): ServiceImpl<typeof ServerReflectionV1Alpha> {
  return {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: answer(index, request.messageRequest, sent) };
      }
    },
  };
}
