// Loads our signing API (proto/osm/cert/v1/certificate.proto) for both the server and the agent.

import { fileURLToPath } from "node:url";
import type * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";

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

let cached: grpc.ServiceDefinition | undefined;

/** The CertificateService definition, parsed once per process. */
export function certificateServiceDefinition(): grpc.ServiceDefinition {
  if (cached === undefined) {
    const definition = loadSync("osm/cert/v1/certificate.proto", {
      includeDirs: [SIGNING_PROTO_ROOT],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    cached = definition["osm.cert.v1.CertificateService"] as grpc.ServiceDefinition;
  }
  return cached;
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
