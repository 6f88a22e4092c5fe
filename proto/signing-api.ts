// Our signing API (proto/osm/cert/v1/certificate.proto) at run time, for both the server and the agent.
//
// The agent's start-up path (DESIGN.md §12) must not parse .proto text: build-signing-api.ts compiles
// the .proto into signing-api.json at build time, and this module reads that JSON with protobufjs'
// light build. The method definitions are what @grpc/proto-loader's loadSync makes (same serializers,
// same conversion options: keepCase, longs String, enums String, defaults, oneofs), without the
// descriptor protos grpc-js never reads; test/unit/signing-proto.test.ts proves the two agree.

import { fileURLToPath } from "node:url";
import type * as grpc from "@grpc/grpc-js";
import type protobuf from "protobufjs/light.js";
import { loadReflectionRoot, serviceDefinition } from "./service-definition.js";

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
  renew_before?: ProtoTimestamp | null;
  renew_window?: ProtoDuration | null;
}

export interface CreateCertificateResponse {
  certificate_chain: string[];
  trust_bundle: TrustBundleMessage | null;
  serial_number: string;
  not_before: ProtoTimestamp | null;
  not_after: ProtoTimestamp | null;
  validity_clamped: boolean;
}

export interface WatchTrustBundleRequest {
  agent_id: string;
}

export interface ReportTrustBundleRequest {
  agent_id: string;
  version: string;
}

export type ReportTrustBundleResponse = Record<string, never>;

const SERVICE_NAME = "osm.cert.v1.CertificateService";

let cached: grpc.ServiceDefinition | undefined;

/** The CertificateService definition, built once per process from the precompiled JSON. */
export function certificateServiceDefinition(): grpc.ServiceDefinition {
  if (cached === undefined) {
    const root = loadReflectionRoot(new URL("./signing-api.json", import.meta.url));
    const service = serviceDefinition(root, SERVICE_NAME, serializer);
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
