// Our signing API (proto/osm/cert/v1/certificate.proto) at run time, for both the server and the agent.
//
// The agent's start-up path (DESIGN.md §12) must not parse .proto text: build-signing-api.ts compiles
// the .proto into signing-api.json at build time, and this module reads that JSON with protobufjs'
// light build. The method definitions are what @grpc/proto-loader's loadSync makes (same serializers,
// same conversion options: keepCase, longs String, enums String, defaults, oneofs), without the
// descriptor protos grpc-js never reads; test/unit/signing-proto.test.ts proves the two agree.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type * as grpc from "@grpc/grpc-js";
import protobuf from "protobufjs/light.js";

export const SIGNING_PROTO_ROOT = fileURLToPath(new URL("../../proto", import.meta.url));

export interface ProtoDuration {
  seconds: string;
  nanos: number;
}
export type ProtoTimestamp = ProtoDuration;

export interface CreateCertificateRequest {
  csr: string;
  validity: ProtoDuration | null;
}

export interface TrustBundleMessage {
  trust_domain: string;
  root_certificates: string[];
  version: string;
}

export interface CreateCertificateResponse {
  certificate_chain: string[];
  trust_bundle: TrustBundleMessage | null;
  serial_number: string;
  not_before: ProtoTimestamp | null;
  not_after: ProtoTimestamp | null;
  validity_clamped: boolean;
}

export type WatchTrustBundleRequest = Record<string, never>;

const SERVICE_NAME = "osm.cert.v1.CertificateService";

// proto-loader's conversion options (keepCase is a parse-time option: the JSON keeps the .proto's names).
const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, oneofs: true };

let cached: grpc.ServiceDefinition | undefined;

/** The CertificateService definition, built once per process from the precompiled JSON. */
export function certificateServiceDefinition(): grpc.ServiceDefinition {
  if (cached === undefined) {
    const json = JSON.parse(
      readFileSync(new URL("./signing-api.json", import.meta.url), "utf8"),
    ) as protobuf.INamespace;
    const root = protobuf.Root.fromJSON(json);
    root.resolveAll();
    const service: Record<string, grpc.MethodDefinition<object, object>> = {};
    for (const method of root.lookupService(SERVICE_NAME).methodsArray) {
      const request = method.resolvedRequestType as protobuf.Type;
      const response = method.resolvedResponseType as protobuf.Type;
      service[method.name] = {
        path: `/${SERVICE_NAME}/${method.name}`,
        requestStream: method.requestStream === true,
        responseStream: method.responseStream === true,
        requestSerialize: serializer(request),
        requestDeserialize: deserializer(request),
        responseSerialize: serializer(response),
        responseDeserialize: deserializer(response),
        originalName: method.name.charAt(0).toLowerCase() + method.name.slice(1),
      };
    }
    cached = service;
  }
  return cached;
}

function serializer(type: protobuf.Type): (value: object) => Buffer {
  return (value) => {
    if (Array.isArray(value))
      throw new Error(
        `Failed to serialize message: expected object with ${type.name} structure, got array instead`,
      );
    const bytes = type.encode(type.fromObject(value)).finish();
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

function deserializer(type: protobuf.Type): (bytes: Buffer) => object {
  return (bytes) => type.toObject(type.decode(bytes), TO_OBJECT);
}

export function durationToMs(d: ProtoDuration | null): number {
  if (d === null) return 0;
  return Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}

export function msToDuration(ms: number): ProtoDuration {
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

export const timestampToDate = (t: ProtoTimestamp | null): Date | null =>
  t === null ? null : new Date(durationToMs(t));

export const dateToTimestamp = (d: Date): ProtoTimestamp => msToDuration(d.getTime());
