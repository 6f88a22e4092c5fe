// Envoy's SDS contract at run time: the SecretDiscoveryService definition for grpc-js and the Secret
// codec, both from the reflection JSON that build-envoy-sds.ts derives from Envoy's canonical protos.
//
// This sits on the agent's start-up path (DESIGN.md §12), so the JSON is parsed once, on first use,
// with protobufjs' light build (no .proto parser). The grpc-js method definitions are assembled here
// rather than by @grpc/proto-loader's fromJSON: they use the same serializers and the same
// conversion options, but skip the descriptor protos proto-loader generates for every message type,
// which grpc-js never reads and which cost most of the load time.

import type * as grpc from "@grpc/grpc-js";
import type protobuf from "protobufjs/light.js";
import { loadReflectionRoot, serviceDefinition } from "./service-definition.js";

export const SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
export const SDS_SERVICE_NAME = "envoy.service.secret.v3.SecretDiscoveryService";

// ---- The message shapes we read and write (field names as in the .proto: keepCase). ----

/** google.protobuf.Any */
export interface AnyMessage {
  type_url: string;
  value: Uint8Array;
}

/** google.rpc.Status, as Envoy puts it in error_detail on a NACK. */
export interface RpcStatus {
  code: number;
  message: string;
}

/** envoy.config.core.v3.Node: only what we log. */
export interface EnvoyNode {
  id: string;
  cluster: string;
}

/** envoy.service.discovery.v3.DiscoveryRequest (decoded with defaults: absent messages are null). */
export interface DiscoveryRequest {
  version_info: string;
  node: EnvoyNode | null;
  resource_names: string[];
  type_url: string;
  response_nonce: string;
  error_detail: RpcStatus | null;
}

/** envoy.service.discovery.v3.DiscoveryResponse: the fields we set. */
export interface DiscoveryResponse {
  version_info: string;
  resources: AnyMessage[];
  type_url: string;
  nonce: string;
}

/** envoy.service.discovery.v3.DeltaDiscoveryRequest */
export interface DeltaDiscoveryRequest {
  node: EnvoyNode | null;
  type_url: string;
  resource_names_subscribe: string[];
  resource_names_unsubscribe: string[];
  initial_resource_versions: Record<string, string>;
  response_nonce: string;
  error_detail: RpcStatus | null;
}

/** envoy.service.discovery.v3.Resource */
export interface DeltaResource {
  name: string;
  version: string;
  resource: AnyMessage;
}

/** envoy.service.discovery.v3.DeltaDiscoveryResponse: the fields we set. */
export interface DeltaDiscoveryResponse {
  system_version_info: string;
  resources: DeltaResource[];
  type_url: string;
  removed_resources: string[];
  nonce: string;
}

/** envoy.config.core.v3.DataSource: we only ever use inline_bytes. */
export interface DataSource {
  inline_bytes?: Uint8Array;
}

/** envoy.extensions.transport_sockets.tls.v3.Secret: the subset the agent serves. */
export interface Secret {
  name: string;
  tls_certificate?: { certificate_chain?: DataSource; private_key?: DataSource };
  validation_context?: { trusted_ca?: DataSource };
}

// ---- Loading, once. ----

interface Loaded {
  readonly service: grpc.ServiceDefinition;
  readonly secret: protobuf.Type;
  readonly discoveryResponse: protobuf.Type;
}

let loaded: Loaded | undefined;

function load(): Loaded {
  if (loaded !== undefined) return loaded;
  const root = loadReflectionRoot(new URL("./envoy-sds.json", import.meta.url));
  const service = serviceDefinition(root, SDS_SERVICE_NAME, serializer);
  loaded = {
    service,
    secret: root.lookupType("envoy.extensions.transport_sockets.tls.v3.Secret"),
    discoveryResponse: root.lookupType("envoy.service.discovery.v3.DiscoveryResponse"),
  };
  return loaded;
}

/**
 * A message already in wire form. The service's serializers pass it through untouched, so a server
 * can encode what many responses share once (see encodeDiscoveryResponse).
 */
export class EncodedMessage {
  constructor(readonly bytes: Buffer) {}
}

function serializer(type: protobuf.Type): (value: object) => Buffer {
  return (value) => {
    if (value instanceof EncodedMessage) return value.bytes;
    return encode(type, value);
  };
}

function encode(type: protobuf.Type, value: object): Buffer {
  const bytes = type.encode(type.fromObject(value)).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The SecretDiscoveryService definition, for `server.addService` or a client constructor. */
export function secretDiscoveryServiceDefinition(): grpc.ServiceDefinition {
  return load().service;
}

/** Encodes a Secret for the `value` of a google.protobuf.Any. */
export function encodeSecret(secret: Secret): Buffer {
  return encode(load().secret, secret);
}

/**
 * Everything but the nonce of a DiscoveryResponse, in wire form: what every stream sent the same
 * resources at the same version shares, encoded once and completed per stream by withNonce.
 */
export function encodeSharedResponse(fields: Omit<DiscoveryResponse, "nonce">): Buffer {
  return encode(load().discoveryResponse, fields);
}

/**
 * `shared` (encodeSharedResponse) completed with a stream's nonce. Protobuf defines the
 * concatenation of two encodings as their merge, so this is the same message as encoding
 * everything at once — built from the canonical definition, with no field numbers of ours. The
 * nonce alone goes through the encoder (no fromObject: a plain object with one string field is
 * what protobufjs's generated encoder reads).
 */
export function withNonce(shared: Buffer, nonce: string): EncodedMessage {
  const tail = load().discoveryResponse.encode({ nonce }).finish();
  return new EncodedMessage(Buffer.concat([shared, tail], shared.length + tail.length));
}

/**
 * A whole DiscoveryResponse in wire form, for a server to write as is to every stream that is sent
 * the same resources with the same nonce (a fan-out: see agent/sds/sds-server.ts).
 */
export function encodeResponse(fields: DiscoveryResponse): EncodedMessage {
  return new EncodedMessage(encode(load().discoveryResponse, fields));
}

/** Decodes a Secret from an Any's `value` (absent fields stay undefined). */
export function decodeSecret(bytes: Uint8Array): Secret {
  const type = load().secret;
  return type.toObject(type.decode(bytes), { oneofs: true }) as Secret;
}
