// Build step (run after tsc): turns Envoy's canonical SDS protos, as shipped by @grpc/grpc-js-xds,
// into one small protobufjs reflection JSON next to the compiled loader. The agent then never parses
// .proto text nor resolves Envoy's import graph at start-up (DESIGN.md §12), and we never hand-write
// an Envoy message definition (DESIGN.md §5).
//
// Only the closure of types reachable from the SDS service and the Secret resource is kept, with
// options stripped: Envoy's protos import validation rules, annotations and dozens of sibling
// messages that cost parse time and memory in every agent but never change the wire format.

import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

export const SDS_PROTO_FILES = [
  "envoy/service/secret/v3/sds.proto",
  "envoy/extensions/transport_sockets/tls/v3/secret.proto",
] as const;

export const SDS_SERVICE_NAME = "envoy.service.secret.v3.SecretDiscoveryService";
export const SECRET_TYPE_NAME = "envoy.extensions.transport_sockets.tls.v3.Secret";

/** The include paths of Envoy's protos inside @grpc/grpc-js-xds. */
export function envoyProtoIncludeDirs(): string[] {
  const require = createRequire(import.meta.url);
  const deps = join(dirname(require.resolve("@grpc/grpc-js-xds/package.json")), "deps");
  return [
    ...["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => join(deps, d)),
    // google/protobuf/descriptor.proto (imported by the annotation protos) ships with protobufjs.
    dirname(require.resolve("protobufjs/package.json")),
  ];
}

/** Loads the canonical protos with every import resolved against the include dirs. */
export function loadCanonicalSdsRoot(includeDirs = envoyProtoIncludeDirs()): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    for (const dir of includeDirs) {
      const candidate = join(dir, target);
      if (existsSync(candidate)) return candidate;
    }
    // protobufjs bundles google/protobuf/*.proto and resolves them itself when no file exists.
    return target;
  };
  root.loadSync([...SDS_PROTO_FILES], { keepCase: true });
  root.resolveAll();
  return root;
}

// Only these field options change how a message is encoded or defaulted; everything else in Envoy's
// protos (validate.rules, udpa annotations, deprecation markers) is documentation for other tools.
const WIRE_FIELD_OPTIONS = new Set(["packed", "proto3_optional"]);

type JsonObject = { [key: string]: unknown };

function wireOptions(options: Record<string, unknown> | undefined): JsonObject | undefined {
  if (options === undefined) return undefined;
  const kept: JsonObject = {};
  for (const [key, value] of Object.entries(options)) if (WIRE_FIELD_OPTIONS.has(key)) kept[key] = value;
  return Object.keys(kept).length === 0 ? undefined : kept;
}

/** Every message and enum reachable from the roots through fields, map values and methods. */
function typeClosure(roots: readonly protobuf.ReflectionObject[]): Set<protobuf.ReflectionObject> {
  const seen = new Set<protobuf.ReflectionObject>();
  const visit = (obj: protobuf.ReflectionObject): void => {
    if (seen.has(obj)) return;
    seen.add(obj);
    if (obj instanceof protobuf.Type) {
      for (const field of obj.fieldsArray) if (field.resolvedType !== null) visit(field.resolvedType);
    } else if (obj instanceof protobuf.Service) {
      for (const method of obj.methodsArray) {
        if (method.resolvedRequestType !== null) visit(method.resolvedRequestType);
        if (method.resolvedResponseType !== null) visit(method.resolvedResponseType);
      }
    }
  };
  for (const root of roots) visit(root);
  return seen;
}

/** Fully qualified (leading dot) so that pruning can never re-target a relative type reference. */
function absoluteName(obj: protobuf.ReflectionObject): string {
  return obj.fullName.startsWith(".") ? obj.fullName : `.${obj.fullName}`;
}

function typeJson(type: protobuf.Type): JsonObject {
  const fields: JsonObject = {};
  for (const field of type.fieldsArray) {
    const json: JsonObject = {};
    if (field instanceof protobuf.MapField) json.keyType = field.keyType;
    if (field.repeated) json.rule = "repeated";
    json.type = field.resolvedType === null ? field.type : absoluteName(field.resolvedType);
    json.id = field.id;
    const options = wireOptions(field.options);
    if (options !== undefined) json.options = options;
    fields[field.name] = json;
  }
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

/** The pruned reflection JSON: the same namespaces and names as the canonical protos, fewer of them. */
export function buildSdsJson(root: protobuf.Root): JsonObject {
  const service = root.lookupService(SDS_SERVICE_NAME);
  const secret = root.lookupType(SECRET_TYPE_NAME);
  const keep = typeClosure([service, secret]);

  const out: JsonObject = { nested: {} };
  const child = (scope: JsonObject, name: string): JsonObject => {
    if (scope.nested === undefined) scope.nested = {};
    const nested = scope.nested as JsonObject;
    if (nested[name] === undefined) nested[name] = {};
    return nested[name] as JsonObject;
  };
  // Places a kept object at its path, creating namespaces (or nesting inside kept parent messages).
  const place = (obj: protobuf.ReflectionObject, json: JsonObject): void => {
    const path = obj.fullName.replace(/^\./, "").split(".");
    let scope = out;
    for (const part of path.slice(0, -1)) scope = child(scope, part);
    // Parents are placed before their nested types, so the slot is new or a bare namespace.
    Object.assign(child(scope, path[path.length - 1] as string), json);
  };
  // Parents first, so that a kept nested message lands inside its kept parent's JSON.
  const ordered = [...keep].sort((a, b) => a.fullName.split(".").length - b.fullName.split(".").length);
  for (const obj of ordered) {
    if (obj instanceof protobuf.Type) place(obj, typeJson(obj));
    else if (obj instanceof protobuf.Enum) place(obj, { values: { ...obj.values } });
    else if (obj instanceof protobuf.Service) place(obj, serviceJson(obj));
  }
  return out;
}

function main(): void {
  const outFile = fileURLToPath(new URL("./envoy-sds.json", import.meta.url));
  const json = buildSdsJson(loadCanonicalSdsRoot());
  // Prove the output stands on its own before shipping it: every reference must resolve.
  protobuf.Root.fromJSON(json).resolveAll();
  mkdirSync(dirname(outFile), { recursive: true });
  writeFileSync(outFile, `${JSON.stringify(json)}\n`);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) main();
