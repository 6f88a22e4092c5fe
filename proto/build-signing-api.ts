// Build step (run after tsc): compiles our signing API (proto/osm/cert/v1/certificate.proto) into a
// small protobufjs reflection JSON next to the compiled loader, the way build-envoy-sds.ts does for
// Envoy's protos. The agent and the server then never load @grpc/proto-loader nor protobufjs' .proto
// parser at run time (DESIGN.md §12): proto/signing-api.ts reads this JSON with protobufjs/light.
//
// Only what the wire format needs is kept: the service, every message reachable from it (including
// google.protobuf.Duration and Timestamp), field ids, types and rules. Comments and file options
// (java_package and the like) never change an encoding.

import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";
import { SIGNING_PROTO_ROOT } from "./signing-api.js";

export const SIGNING_PROTO_FILE = "osm/cert/v1/certificate.proto";
export const SIGNING_SERVICE_NAME = "osm.cert.v1.CertificateService";

/** Parses certificate.proto as @grpc/proto-loader would (keepCase), every import resolved. */
export function loadCanonicalSigningRoot(protoRoot = SIGNING_PROTO_ROOT): protobuf.Root {
  const root = new protobuf.Root();
  // google/protobuf/*.proto are not files here: protobufjs resolves them from its bundled copies.
  root.resolvePath = (_origin, target) => (target.startsWith("google/") ? target : `${protoRoot}/${target}`);
  root.loadSync(SIGNING_PROTO_FILE, { keepCase: true });
  root.resolveAll();
  return root;
}

type JsonObject = { [key: string]: unknown };

// Field options that change an encoding; everything else is documentation for other tools.
const WIRE_FIELD_OPTIONS = new Set(["packed", "proto3_optional"]);

function absoluteName(obj: protobuf.ReflectionObject): string {
  return obj.fullName.startsWith(".") ? obj.fullName : `.${obj.fullName}`;
}

function fieldJson(field: protobuf.Field): JsonObject {
  const json: JsonObject = {};
  if (field instanceof protobuf.MapField) json.keyType = field.keyType;
  if (field.repeated) json.rule = "repeated";
  json.type = field.resolvedType === null ? field.type : absoluteName(field.resolvedType);
  json.id = field.id;
  const options: JsonObject = {};
  for (const [key, value] of Object.entries(field.options ?? {}))
    if (WIRE_FIELD_OPTIONS.has(key)) options[key] = value;
  if (Object.keys(options).length > 0) json.options = options;
  return json;
}

function typeJson(type: protobuf.Type): JsonObject {
  const fields: JsonObject = {};
  for (const field of type.fieldsArray) fields[field.name] = fieldJson(field);
  const out: JsonObject = { fields };
  if (type.oneofsArray.length > 0) {
    const oneofs: JsonObject = {};
    for (const oneof of type.oneofsArray) oneofs[oneof.name] = { oneof: [...oneof.oneof] };
    out.oneofs = oneofs;
  }
  return out;
}

function serviceJson(service: protobuf.Service): JsonObject {
  const methods: JsonObject = {};
  for (const method of service.methodsArray) {
    const json: JsonObject = {
      requestType: absoluteName(method.resolvedRequestType as protobuf.Type),
      responseType: absoluteName(method.resolvedResponseType as protobuf.Type),
    };
    if (method.requestStream === true) json.requestStream = true;
    if (method.responseStream === true) json.responseStream = true;
    methods[method.name] = json;
  }
  return { methods };
}

/** The service and the closure of its messages and enums, under their canonical full names. */
export function buildSigningJson(root: protobuf.Root): JsonObject {
  const service = root.lookupService(SIGNING_SERVICE_NAME);
  const keep = new Set<protobuf.ReflectionObject>();
  const visit = (obj: protobuf.ReflectionObject): void => {
    if (keep.has(obj)) return;
    keep.add(obj);
    if (obj instanceof protobuf.Type) {
      for (const field of obj.fieldsArray) if (field.resolvedType !== null) visit(field.resolvedType);
    } else if (obj instanceof protobuf.Service) {
      for (const method of obj.methodsArray) {
        visit(method.resolvedRequestType as protobuf.Type);
        visit(method.resolvedResponseType as protobuf.Type);
      }
    }
  };
  visit(service);

  const out: JsonObject = {};
  const child = (scope: JsonObject, name: string): JsonObject => {
    scope.nested ??= {};
    const nested = scope.nested as JsonObject;
    nested[name] ??= {};
    return nested[name] as JsonObject;
  };
  // Parents first, so that a kept nested message lands inside its kept parent's JSON.
  const ordered = [...keep].sort((a, b) => a.fullName.split(".").length - b.fullName.split(".").length);
  for (const obj of ordered) {
    const path = obj.fullName.replace(/^\./, "").split(".");
    let scope = out;
    for (const part of path.slice(0, -1)) scope = child(scope, part);
    const slot = child(scope, path[path.length - 1] as string);
    if (obj instanceof protobuf.Type) Object.assign(slot, typeJson(obj));
    else if (obj instanceof protobuf.Enum) Object.assign(slot, { values: { ...obj.values } });
    else if (obj instanceof protobuf.Service) Object.assign(slot, serviceJson(obj));
  }
  return out;
}

function main(): void {
  const outFile = fileURLToPath(new URL("./signing-api.json", import.meta.url));
  const json = buildSigningJson(loadCanonicalSigningRoot());
  // Prove the output stands on its own before shipping it: every reference must resolve.
  protobuf.Root.fromJSON(json).resolveAll();
  mkdirSync(dirname(outFile), { recursive: true });
  writeFileSync(outFile, `${JSON.stringify(json)}\n`);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) main();
