// The precompiled signing API (signing-api.json read with protobufjs/light) against @grpc/proto-loader's
// loadSync of proto/osm/cert/v1/certificate.proto: the same wire bytes and the same decoded shapes
// (keepCase, longs as strings, enums as strings, defaults, oneofs), both ways, for every method.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import type * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import {
  type CreateCertificateRequest,
  type CreateCertificateResponse,
  certificateServiceDefinition,
  dateToTimestamp,
  msToDuration,
  SIGNING_PROTO_ROOT,
  type TrustBundleMessage,
} from "../../proto/signing-api.js";

const canonical = loadSync("osm/cert/v1/certificate.proto", {
  includeDirs: [SIGNING_PROTO_ROOT],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const theirs = canonical["osm.cert.v1.CertificateService"] as grpc.ServiceDefinition;
const ours = certificateServiceDefinition();

type Method = grpc.MethodDefinition<object, object>;

function methods(): [string, Method, Method][] {
  return Object.keys(theirs).map((name) => [name, ours[name] as Method, theirs[name] as Method]);
}

/** Encodes with each side, checks the bytes agree, and checks each side decodes the other's bytes alike. */
function agree(
  encodeOurs: (v: object) => Buffer,
  encodeTheirs: (v: object) => Buffer,
  decodeOurs: (b: Buffer) => object,
  decodeTheirs: (b: Buffer) => object,
  value: object,
): object {
  const ourBytes = encodeOurs(value);
  const theirBytes = encodeTheirs(value);
  assert.deepEqual(Buffer.from(ourBytes), Buffer.from(theirBytes));
  const decoded = decodeTheirs(theirBytes);
  assert.deepEqual(decodeOurs(theirBytes), decoded);
  assert.deepEqual(decodeOurs(ourBytes), decodeTheirs(ourBytes));
  return decoded;
}

const requests: CreateCertificateRequest[] = [
  {
    csr: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
    validity: msToDuration(86_400_000),
  },
  { csr: "x", validity: msToDuration(1_500) },
  // Above 2^53: int64 seconds stay exact as strings.
  { csr: "", validity: { seconds: "9007199254740993", nanos: 999_999_999 } },
  { csr: "", validity: { seconds: "-5", nanos: -1 } },
  { csr: "", validity: null },
];

const bundle: TrustBundleMessage = {
  trust_domain: "cluster.local",
  root_certificates: ["-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n", "B"],
  version: "sha256:0f",
  renew_before: null,
  renew_window: null,
};

// Renew-now (issue 9) rides on the bundle message: additive fields 4 and 5.
const bundleWithRenew: TrustBundleMessage = {
  ...bundle,
  renew_before: dateToTimestamp(new Date("2026-11-30T18:00:00.250Z")),
  renew_window: { seconds: "300", nanos: 0 },
};

const responses: CreateCertificateResponse[] = [
  {
    certificate_chain: ["leaf", "intermediate"],
    trust_bundle: bundle,
    serial_number: "7F00AB",
    not_before: dateToTimestamp(new Date("2024-01-02T03:04:05.678Z")),
    not_after: dateToTimestamp(new Date("2099-12-31T23:59:59Z")),
    validity_clamped: true,
  },
  {
    certificate_chain: [],
    trust_bundle: null,
    serial_number: "",
    not_before: null,
    not_after: null,
    validity_clamped: false,
  },
];

test("the precompiled service has proto-loader's methods, paths, streaming flags and names", () => {
  assert.deepEqual(Object.keys(ours).sort(), Object.keys(theirs).sort());
  for (const [name, mine, canon] of methods()) {
    assert.equal(mine.path, canon.path, name);
    assert.equal(mine.requestStream, canon.requestStream, name);
    assert.equal(mine.responseStream, canon.responseStream, name);
    assert.equal(mine.originalName, canon.originalName, name);
  }
});

test("CreateCertificate requests and responses: same bytes, same decoded shapes", () => {
  const [, mine, canon] = methods().find(([name]) => name === "CreateCertificate") as [
    string,
    Method,
    Method,
  ];
  for (const request of requests) {
    const decoded = agree(
      mine.requestSerialize,
      canon.requestSerialize,
      mine.requestDeserialize,
      canon.requestDeserialize,
      request,
    );
    assert.deepEqual(decoded, request);
  }
  for (const response of responses) {
    const decoded = agree(
      mine.responseSerialize,
      canon.responseSerialize,
      mine.responseDeserialize,
      canon.responseDeserialize,
      response,
    );
    assert.deepEqual(decoded, response);
  }
});

test("WatchTrustBundle: the empty request and the bundle stream", () => {
  const [, mine, canon] = methods().find(([name]) => name === "WatchTrustBundle") as [string, Method, Method];
  assert.deepEqual(
    agree(mine.requestSerialize, canon.requestSerialize, mine.requestDeserialize, canon.requestDeserialize, {
      agent_id: "3f1c",
    }),
    { agent_id: "3f1c" },
  );
  for (const message of [
    bundle,
    bundleWithRenew,
    { trust_domain: "", root_certificates: [], version: "", renew_before: null, renew_window: null },
  ]) {
    const decoded = agree(
      mine.responseSerialize,
      canon.responseSerialize,
      mine.responseDeserialize,
      canon.responseDeserialize,
      message,
    );
    assert.deepEqual(decoded, message);
  }
});

test("defaults: an empty message decodes to the same full shape on both sides", () => {
  for (const [name, mine, canon] of methods()) {
    const empty = Buffer.alloc(0);
    assert.deepEqual(mine.requestDeserialize(empty), canon.requestDeserialize(empty), name);
    assert.deepEqual(mine.responseDeserialize(empty), canon.responseDeserialize(empty), name);
  }
  const [, mine] = methods().find(([name]) => name === "CreateCertificate") as [string, Method, Method];
  assert.deepEqual(mine.responseDeserialize(Buffer.alloc(0)), responses[1]);
});

test("unknown fields from a newer server are skipped alike", () => {
  const [, mine, canon] = methods().find(([name]) => name === "CreateCertificate") as [
    string,
    Method,
    Method,
  ];
  const known = canon.responseSerialize(responses[0] as object);
  // Field 99, length-delimited, 3 bytes; then field 100, varint 1.
  const wire = Buffer.concat([known, Buffer.from([0x9a, 0x06, 0x03, 0x61, 0x62, 0x63, 0xa0, 0x06, 0x01])]);
  assert.deepEqual(mine.responseDeserialize(wire), canon.responseDeserialize(wire));
});

test("serializers refuse an array as proto-loader does", () => {
  for (const [name, mine, canon] of methods()) {
    assert.throws(() => canon.requestSerialize([] as unknown as object), name);
    assert.throws(() => mine.requestSerialize([] as unknown as object), name);
  }
});

test("the shipped JSON holds only the service and the messages it reaches", () => {
  const json = JSON.parse(readFileSync(new URL("../../proto/signing-api.json", import.meta.url), "utf8")) as {
    nested: Record<string, { nested: Record<string, { nested: Record<string, unknown> }> }>;
  };
  const names = (ns: { nested?: Record<string, unknown> }, prefix: string): string[] =>
    Object.entries(ns.nested ?? {}).flatMap(([key, value]) => {
      const full = prefix === "" ? key : `${prefix}.${key}`;
      const inner = value as { nested?: Record<string, unknown>; fields?: unknown; methods?: unknown };
      const self = inner.fields !== undefined || inner.methods !== undefined ? [full] : [];
      return [...self, ...names(inner, full)];
    });
  assert.deepEqual(names(json, "").sort(), [
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "osm.cert.v1.CertificateService",
    "osm.cert.v1.CreateCertificateRequest",
    "osm.cert.v1.CreateCertificateResponse",
    "osm.cert.v1.ReportTrustBundleRequest",
    "osm.cert.v1.ReportTrustBundleResponse",
    "osm.cert.v1.TrustBundle",
    "osm.cert.v1.WatchTrustBundleRequest",
  ]);
});
