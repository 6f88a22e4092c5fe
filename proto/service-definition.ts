// grpc-js service definitions from precompiled reflection JSON (made at build time from the .proto
// files), without @grpc/proto-loader or protobufjs' .proto parser at run time. Decoded messages have
// proto-loader's shapes (keepCase, longs and enums as strings, defaults, oneofs), so handlers read
// the same objects either way; tests prove it against proto-loader.

import { readFileSync } from "node:fs";
import type * as grpc from "@grpc/grpc-js";
import protobuf from "protobufjs/light.js";

export const TO_OBJECT: protobuf.IConversionOptions = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

export function loadReflectionRoot(json: URL): protobuf.Root {
  const root = protobuf.Root.fromJSON(JSON.parse(readFileSync(json, "utf8")) as protobuf.INamespace);
  root.resolveAll();
  return root;
}

export function deserializer(type: protobuf.Type): (bytes: Buffer) => object {
  return (bytes) => type.toObject(type.decode(bytes), TO_OBJECT);
}

/** Every method of `serviceName`, serialised by `serializerFor(type)` and decoded as proto-loader does. */
export function serviceDefinition(
  root: protobuf.Root,
  serviceName: string,
  serializerFor: (type: protobuf.Type) => (value: object) => Buffer,
): grpc.ServiceDefinition {
  const service: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const method of root.lookupService(serviceName).methodsArray) {
    const request = method.resolvedRequestType as protobuf.Type;
    const response = method.resolvedResponseType as protobuf.Type;
    service[method.name] = {
      path: `/${serviceName}/${method.name}`,
      requestStream: method.requestStream === true,
      responseStream: method.responseStream === true,
      requestSerialize: serializerFor(request),
      requestDeserialize: deserializer(request),
      responseSerialize: serializerFor(response),
      responseDeserialize: deserializer(response),
      originalName: method.name.charAt(0).toLowerCase() + method.name.slice(1),
    };
  }
  return service;
}
