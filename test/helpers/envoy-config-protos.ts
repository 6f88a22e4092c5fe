// Reads Envoy configuration the way Envoy does, from Envoy's canonical protos (shipped by
// @grpc/grpc-js-xds under deps/): proto3 JSON (YAML is the same tree) into a message, strictly.
//
// protobufjs' fromObject alone would let a misspelt field through (it ignores unknown keys) and does
// not speak proto3 JSON's forms for well-known types ("5s" durations, bare wrapper values, Any with
// "@type"). So this reader walks the document against the reflection types: an unknown field, a wrong
// type, an undefined enum name, two members of one oneof or an Any whose type cannot be found is an
// error naming its path. Every Any is resolved, loading the protos of its package on demand, and read
// the same way. It also checks the subset of Envoy's protoc-gen-validate rules that our output could
// break (required messages and oneofs, string and list lengths, numeric and duration bounds): Envoy
// rejects a bootstrap that fails them. Then the converted object goes through protobufjs
// fromObject → encode → decode → toObject and must come back unchanged.

import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import protobuf from "protobufjs";

const DEPS = join(dirname(createRequire(import.meta.url).resolve("@grpc/grpc-js-xds/package.json")), "deps");
const INCLUDE = [
  ...["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => join(DEPS, d)),
  // google/protobuf/descriptor.proto, imported by the annotation protos, ships with protobufjs.
  dirname(createRequire(import.meta.url).resolve("protobufjs/package.json")),
];

export const BOOTSTRAP_TYPE = "envoy.config.bootstrap.v3.Bootstrap";
const TYPE_URL_PREFIX = "type.googleapis.com/";

/** Called for every message read, Any contents included: the type's full name (no leading dot). */
export type MessageVisitor = (typeName: string, json: Record<string, unknown>, path: string) => void;

export class EnvoyConfigError extends Error {}

type Plain = Record<string, unknown>;

const WRAPPERS = new Set(
  ["Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes"].map(
    (n) => `google.protobuf.${n}Value`,
  ),
);
/** Well-known types whose proto3 JSON form is not an object of their fields. */
const SPECIAL_JSON = new Set([...WRAPPERS, "google.protobuf.Duration", "google.protobuf.Timestamp"]);
const UNSUPPORTED = new Set([
  "google.protobuf.Struct",
  "google.protobuf.Value",
  "google.protobuf.ListValue",
  "google.protobuf.FieldMask",
  "google.protobuf.Timestamp",
]);

const INT32 = new Set(["int32", "sint32", "sfixed32"]);
const UINT32 = new Set(["uint32", "fixed32"]);
const INT64 = new Set(["int64", "sint64", "sfixed64", "uint64", "fixed64"]);

function lowerCamel(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

function fullName(obj: protobuf.ReflectionObject): string {
  return obj.fullName.replace(/^\./, "");
}

export class EnvoyConfigProtos {
  readonly root = new protobuf.Root();
  private readonly loadedDirs = new Set<string>();

  constructor(files: readonly string[] = ["envoy/config/bootstrap/v3/bootstrap.proto"]) {
    this.root.resolvePath = (_origin, target) => {
      for (const dir of INCLUDE) {
        const candidate = join(dir, target);
        if (existsSync(candidate)) return candidate;
      }
      return target;
    };
    this.root.loadSync([...files], { keepCase: true });
    this.root.resolveAll();
  }

  /** The message type an Any's type URL names. */
  typeForUrl(typeUrl: string): protobuf.Type {
    if (!typeUrl.startsWith(TYPE_URL_PREFIX))
      throw new Error(`type URL "${typeUrl}" lacks ${TYPE_URL_PREFIX}`);
    return this.type(typeUrl.slice(TYPE_URL_PREFIX.length));
  }

  /** A message type by full name, loading its package's protos if not yet loaded. */
  type(name: string): protobuf.Type {
    const found = this.tryLookup(name);
    if (found !== null) return found;
    // Envoy's protos live at the path of their package: envoy/extensions/…/v3/*.proto.
    const packageDir = name.split(".").slice(0, -1).join("/");
    for (const dir of INCLUDE) {
      const candidate = join(dir, packageDir);
      if (!existsSync(candidate) || this.loadedDirs.has(candidate)) continue;
      this.loadedDirs.add(candidate);
      const files = readdirSync(candidate).filter((f) => f.endsWith(".proto"));
      this.root.loadSync(
        files.map((f) => join(packageDir, f)),
        { keepCase: true },
      );
      this.root.resolveAll();
    }
    const loaded = this.tryLookup(name);
    if (loaded === null) throw new Error(`no message type ${name} in Envoy's protos`);
    return loaded;
  }

  private tryLookup(name: string): protobuf.Type | null {
    try {
      return this.root.lookupType(name);
    } catch {
      return null;
    }
  }

  /**
   * Reads `json` as the message `typeName`, strictly (see the file comment), then proves the
   * protobuf round trip loses nothing. Returns the decoded message as a protobufjs plain object.
   */
  read(typeName: string, json: unknown, visit: MessageVisitor = () => {}): Plain {
    const type = this.type(typeName);
    const reader = new Reader(this, visit);
    const converted = reader.message(type, json, typeName);
    if (reader.violations.length > 0) throw new EnvoyConfigError(reader.violations.join("\n"));
    return roundTrip(type, converted, typeName);
  }
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, bytes: String };

/** fromObject → encode → decode → toObject must give back exactly what went in. */
function roundTrip(type: protobuf.Type, converted: Plain, path: string): Plain {
  const bytes = type.encode(type.fromObject(converted)).finish();
  const back = type.toObject(type.decode(bytes), TO_OBJECT);
  const expected = type.toObject(type.fromObject(converted), TO_OBJECT);
  const a = JSON.stringify(sortKeys(back));
  const b = JSON.stringify(sortKeys(expected));
  const c = JSON.stringify(sortKeys(normalizeInput(converted)));
  if (a !== b || b !== c) {
    throw new EnvoyConfigError(
      `${path}: the protobuf round trip changed the message:\n in:  ${c}\n out: ${a}`,
    );
  }
  return back;
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value instanceof Uint8Array) return Buffer.from(value).toString("base64");
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys((value as Plain)[k])]),
    );
  }
  return value;
}

/** The reader's output in toObject's conventions: bytes as base64, 64-bit integers as strings. */
function normalizeInput(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString("base64");
  if (Array.isArray(value)) return value.map(normalizeInput);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalizeInput(v)]));
  }
  return value;
}

class Reader {
  readonly violations: string[] = [];

  constructor(
    private readonly protos: EnvoyConfigProtos,
    private readonly visit: MessageVisitor,
  ) {}

  private fail(path: string, why: string): never {
    throw new EnvoyConfigError(`${path}: ${why}`);
  }

  message(type: protobuf.Type, json: unknown, path: string): Plain {
    const name = fullName(type);
    if (UNSUPPORTED.has(name)) this.fail(path, `${name} is not supported by this reader`);
    if (name === "google.protobuf.Any") return this.any(json, path);
    if (name === "google.protobuf.Duration") return this.duration(json, path);
    if (WRAPPERS.has(name)) {
      return { value: this.scalar(type.fields.value as protobuf.Field, json, `${path}.value`) };
    }
    if (json === null || typeof json !== "object" || Array.isArray(json)) {
      this.fail(path, `expected an object for ${name}`);
    }
    const object = json as Plain;
    this.visit(name, object, path);
    const out: Plain = {};
    const oneofSet = new Map<string, string>();
    for (const [key, value] of Object.entries(object)) {
      const field = type.fields[key] ?? type.fieldsArray.find((f) => lowerCamel(f.name) === key);
      if (field === undefined) this.fail(`${path}.${key}`, `unknown field of ${name}`);
      if (out[field.name] !== undefined) this.fail(`${path}.${key}`, `${field.name} is given twice`);
      const at = `${path}.${key}`;
      if (value === null) this.fail(at, "null is not a value Envoy's config should carry");
      const oneof = field.partOf;
      if (oneof !== null) {
        const other = oneofSet.get(oneof.name);
        if (other !== undefined) this.fail(at, `oneof ${oneof.name} already has ${other}`);
        oneofSet.set(oneof.name, field.name);
      }
      out[field.name] = this.field(field, value, at);
    }
    this.checkRules(type, out, oneofSet, path);
    return out;
  }

  private field(field: protobuf.Field, value: unknown, path: string): unknown {
    if (field instanceof protobuf.MapField) {
      if (value === null || typeof value !== "object" || Array.isArray(value))
        this.fail(path, "expected a map");
      const out: Plain = {};
      for (const [k, v] of Object.entries(value as Plain)) {
        if (field.keyType !== "string")
          this.fail(path, `map keys of type ${field.keyType} are not supported`);
        out[k] = this.single(field, v, `${path}[${JSON.stringify(k)}]`);
      }
      return out;
    }
    if (field.repeated) {
      if (!Array.isArray(value)) this.fail(path, "expected a list");
      return value.map((item, i) => this.single(field, item, `${path}[${i}]`));
    }
    return this.single(field, value, path);
  }

  private single(field: protobuf.Field, value: unknown, path: string): unknown {
    const resolved = field.resolvedType;
    if (resolved instanceof protobuf.Type) return this.message(resolved, value, path);
    if (resolved instanceof protobuf.Enum) {
      if (typeof value === "string" && resolved.values[value] !== undefined) return value;
      if (typeof value === "number" && Object.values(resolved.values).includes(value)) return value;
      return this.fail(path, `${JSON.stringify(value)} is not a value of enum ${fullName(resolved)}`);
    }
    return this.scalar(field, value, path);
  }

  private scalar(field: protobuf.Field, value: unknown, path: string): unknown {
    const t = field.type;
    const integer = (min: number, max: number): number => {
      const n = typeof value === "string" && /^-?\d+$/.test(value) ? Number(value) : value;
      if (typeof n !== "number" || !Number.isInteger(n) || n < min || n > max) {
        this.fail(path, `${JSON.stringify(value)} is not a ${t}`);
      }
      return n;
    };
    if (t === "string") {
      if (typeof value !== "string") this.fail(path, `expected a string, got ${JSON.stringify(value)}`);
      return value;
    }
    if (t === "bool") {
      if (typeof value !== "boolean") this.fail(path, `expected true or false, got ${JSON.stringify(value)}`);
      return value;
    }
    if (INT32.has(t)) return integer(-(2 ** 31), 2 ** 31 - 1);
    if (UINT32.has(t)) return integer(0, 2 ** 32 - 1);
    if (INT64.has(t)) {
      if (!(typeof value === "string" ? /^-?\d+$/.test(value) : Number.isSafeInteger(value))) {
        this.fail(path, `${JSON.stringify(value)} is not a ${t}`);
      }
      return String(value);
    }
    if (t === "double" || t === "float") {
      if (typeof value !== "number") this.fail(path, `expected a number, got ${JSON.stringify(value)}`);
      return value;
    }
    if (t === "bytes") {
      if (typeof value !== "string" || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(value)) {
        this.fail(path, "expected base64 bytes");
      }
      return Buffer.from(value, "base64");
    }
    return this.fail(path, `unsupported scalar type ${t}`);
  }

  /** proto3 JSON Duration: "1.5s", "-3s", up to nanosecond precision. */
  private duration(json: unknown, path: string): Plain {
    const match = typeof json === "string" ? /^(-)?(\d+)(?:\.(\d{1,9}))?s$/.exec(json) : null;
    if (match === null)
      return this.fail(path, `${JSON.stringify(json)} is not a proto3 JSON duration ("1.5s")`);
    const sign = match[1] === "-" ? -1 : 1;
    const nanos = Number((match[3] ?? "").padEnd(9, "0"));
    return { seconds: String(sign * Number(match[2])), nanos: sign * nanos };
  }

  private any(json: unknown, path: string): Plain {
    if (json === null || typeof json !== "object" || Array.isArray(json)) this.fail(path, "expected an Any");
    this.visit("google.protobuf.Any", json as Plain, path);
    const { "@type": typeUrl, ...rest } = json as Plain;
    if (typeof typeUrl !== "string") return this.fail(path, 'an Any needs "@type"');
    let type: protobuf.Type;
    try {
      type = this.protos.typeForUrl(typeUrl);
    } catch (error) {
      return this.fail(`${path}["@type"]`, (error as Error).message);
    }
    // A well-known type with a special JSON form sits under "value" inside an Any.
    const inner = SPECIAL_JSON.has(fullName(type)) ? rest.value : rest;
    if (SPECIAL_JSON.has(fullName(type)) && Object.keys(rest).some((k) => k !== "value")) {
      this.fail(path, `an Any of ${fullName(type)} carries only "value"`);
    }
    const converted = this.message(type, inner, `${path}<${fullName(type)}>`);
    roundTrip(type, converted, path);
    return { type_url: typeUrl, value: type.encode(type.fromObject(converted)).finish() };
  }

  // ---- protoc-gen-validate, the rules our output could break ----

  private checkRules(type: protobuf.Type, out: Plain, oneofSet: Map<string, string>, path: string): void {
    for (const oneof of type.oneofsArray) {
      if (oneof.options?.["(validate.required)"] === true && !oneofSet.has(oneof.name)) {
        this.violations.push(`${path}: one of ${oneof.oneof.join(", ")} is required (${fullName(type)})`);
      }
    }
    for (const field of type.fieldsArray) {
      const rules = validateRules(field);
      if (rules === undefined) continue;
      const value = out[field.name];
      // Rules do not apply to the unset members of a oneof.
      if (field.partOf !== null && oneofSet.get(field.partOf.name) !== field.name) continue;
      const at = `${path}.${field.name}`;
      const complain = (why: string) => this.violations.push(`${at}: ${why} (${fullName(type)})`);
      const message = rules.message as Plain | undefined;
      if (message?.required === true && value === undefined) complain("is required");
      const string = rules.string as Plain | undefined;
      if (string !== undefined && !field.repeated) {
        const text = (value as string | undefined) ?? "";
        if (typeof string.min_len === "number" && [...text].length < string.min_len) {
          complain(`needs at least ${string.min_len} characters`);
        }
        if (typeof string.min_bytes === "number" && Buffer.byteLength(text) < string.min_bytes) {
          complain(`needs at least ${string.min_bytes} bytes`);
        }
        if (typeof string.max_bytes === "number" && Buffer.byteLength(text) > string.max_bytes) {
          complain(`takes at most ${string.max_bytes} bytes`);
        }
      }
      const repeated = rules.repeated as Plain | undefined;
      if (
        typeof repeated?.min_items === "number" &&
        ((value as unknown[] | undefined)?.length ?? 0) < repeated.min_items
      ) {
        complain(`needs at least ${repeated.min_items} items`);
      }
      for (const kind of ["uint32", "uint64", "int32", "int64", "double"]) {
        const bounds = rules[kind] as Plain | undefined;
        if (bounds === undefined || value === undefined) continue;
        checkBounds(Number(value), bounds, complain);
      }
      const duration = rules.duration as Plain | undefined;
      if (duration !== undefined && value !== undefined) {
        const d = value as { seconds: string; nanos: number };
        const asNumber = (b: unknown) => {
          const { seconds = 0, nanos = 0 } = (b ?? {}) as { seconds?: number; nanos?: number };
          return Number(seconds) + nanos / 1e9;
        };
        const bounds: Plain = {};
        for (const k of ["gt", "gte", "lt", "lte"])
          if (duration[k] !== undefined) bounds[k] = asNumber(duration[k]);
        checkBounds(Number(d.seconds) + d.nanos / 1e9, bounds, complain);
      }
    }
  }
}

function validateRules(field: protobuf.Field): Plain | undefined {
  let rules: Plain | undefined;
  for (const option of (field.parsedOptions ?? []) as Plain[]) {
    const r = option["(validate.rules)"] as Plain | undefined;
    if (r !== undefined) rules = { ...rules, ...r };
  }
  return rules;
}

function checkBounds(n: number, bounds: Plain, complain: (why: string) => void): void {
  if (typeof bounds.gt === "number" && !(n > bounds.gt)) complain(`must be > ${bounds.gt}`);
  if (typeof bounds.gte === "number" && !(n >= bounds.gte)) complain(`must be >= ${bounds.gte}`);
  if (typeof bounds.lt === "number" && !(n < bounds.lt)) complain(`must be < ${bounds.lt}`);
  if (typeof bounds.lte === "number" && !(n <= bounds.lte)) complain(`must be <= ${bounds.lte}`);
}
