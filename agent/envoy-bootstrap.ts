// What Envoy needs to take its secrets from the agent (DESIGN.md §5, issue 6): a static cluster
// reaching the agent's SDS socket over HTTP/2, and the SdsSecretConfigs naming what the agent serves.
// Pure data in Envoy's proto3 JSON/YAML form with the protos' own field names; the CLI prints it
// (cli/envoy-bootstrap.ts) and tests parse it with Envoy's canonical protos. Not part of the agent
// process: nothing on the agent's start-up path imports this file.

import { isIP } from "node:net";
import { isAbsolute } from "node:path";
import { type HostPort, parseHostPort } from "../common/admin-http.js";
import { isDnsSubdomain } from "../common/identity.js";
import { DEFAULT_CERT_NAME, ROOT_CA_NAME } from "./sds/resources.js";

/** The cluster name agreed with the chart and the webhook (CONTRACT.md). */
export const SDS_CLUSTER_NAME = "osm-cert-sds";
export const UPSTREAM_CLUSTER_NAME = "mesh-upstream";
export const LISTENER_NAME = "mesh-inbound";

const TYPE = "type.googleapis.com/";
const HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/** sun_path is 108 bytes on Linux, one of them the terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;

export type JsonObject = { [key: string]: JsonValue };
export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;

/** Throws with a message completing "invalid --sds-socket: " when Envoy could not connect to `path`. */
export function validateSocketPath(path: string): void {
  // Envoy resolves a relative pipe path against its own working directory, not the agent's.
  if (!isAbsolute(path)) throw new Error(`"${path}" is not an absolute path`);
  if (path.includes("\0")) throw new Error("the path contains a NUL byte");
  if (path.endsWith("/")) throw new Error(`"${path}" names a directory, not a socket`);
  const bytes = Buffer.byteLength(path, "utf8");
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new Error(
      `"${path}" is ${bytes} bytes; a Unix socket path holds at most ${MAX_SOCKET_PATH_BYTES} (sun_path)`,
    );
  }
}

export type SocketAddress = HostPort;

/** HOST:PORT (common/admin-http.ts syntax) naming a real peer: an IP or DNS name, a port in 1..65535. */
export function parseSocketAddress(text: string): SocketAddress {
  const address = parseHostPort(text);
  if (address.port < 1) throw new Error(`"${text}" has port 0; Envoy needs a real port`);
  if (isIP(address.host) === 0 && !isDnsSubdomain(address.host)) {
    throw new Error(`"${address.host}" is neither an IP address nor a DNS name`);
  }
  return address;
}

export function validateSpiffeId(text: string): void {
  if (!/^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$/.test(text)) {
    throw new Error(`"${text}" is not a SPIFFE ID (spiffe://<trust-domain>/<path>)`);
  }
}

/**
 * The config source of every secret: the agent, over the SDS cluster.
 *
 * GRPC (state of the world) rather than DELTA_GRPC, though the agent serves both: Envoy opens one
 * SDS subscription per secret config, each naming a single resource, so Delta has nothing to save;
 * SotW is the variant every Envoy release and every other SDS server (Istio's agent, SPIRE) speaks,
 * so this bootstrap keeps working if the agent beside it is ever swapped.
 */
export function sdsConfigSource(): JsonObject {
  return {
    resource_api_version: "V3",
    // A listener whose certificate has not arrived cannot do mTLS: keep it warming (0s = wait
    // forever) instead of Envoy's default of giving up after 15 s and serving without it.
    initial_fetch_timeout: "0s",
    api_config_source: {
      api_type: "GRPC",
      transport_api_version: "V3",
      // Only the first request of a stream carries the node: the agent identifies streams by socket.
      set_node_on_first_message_only: true,
      grpc_services: [{ envoy_grpc: { cluster_name: SDS_CLUSTER_NAME } }],
    },
  };
}

export function sdsSecretConfig(name: string): JsonObject {
  return { name, sds_config: sdsConfigSource() };
}

/** A static cluster of one endpoint: the agent's socket, spoken to over HTTP/2 (gRPC). */
export function sdsCluster(socketPath: string): JsonObject {
  validateSocketPath(socketPath);
  return {
    name: SDS_CLUSTER_NAME,
    type: "STATIC",
    connect_timeout: "1s",
    typed_extension_protocol_options: {
      [HTTP_PROTOCOL_OPTIONS]: {
        "@type": `${TYPE}${HTTP_PROTOCOL_OPTIONS}`,
        explicit_http_config: { http2_protocol_options: {} },
      },
    },
    load_assignment: {
      cluster_name: SDS_CLUSTER_NAME,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: socketPath } } } }] }],
    },
  };
}

/**
 * The CommonTlsContext both sides of an mTLS connection use: this pod's certificate (`default`) and
 * the mesh trust bundle (`ROOTCA`), both from the agent. With `peerSpiffeIds`, the peer must also
 * present one of them as a URI SAN; that static matcher is merged with the agent's ROOTCA by
 * Envoy's combined validation context.
 */
export function commonTlsContext(peerSpiffeIds: readonly string[] = []): JsonObject {
  for (const id of peerSpiffeIds) validateSpiffeId(id);
  const rootCa = sdsSecretConfig(ROOT_CA_NAME);
  const context: JsonObject = {
    tls_certificate_sds_secret_configs: [sdsSecretConfig(DEFAULT_CERT_NAME)],
  };
  if (peerSpiffeIds.length === 0) {
    context.validation_context_sds_secret_config = rootCa;
  } else {
    context.combined_validation_context = {
      default_validation_context: {
        match_typed_subject_alt_names: peerSpiffeIds.map((id) => ({
          san_type: "URI",
          matcher: { exact: id },
        })),
      },
      validation_context_sds_secret_config: rootCa,
    };
  }
  return context;
}

/**
 * The fragment: `bootstrap` merges into an existing Envoy bootstrap (it adds the SDS cluster; e.g.
 * with `envoy --config-yaml`), `common_tls_context` is what a TLS context must carry to take its
 * secrets from the agent.
 */
export function bootstrapFragment(socketPath: string): JsonObject {
  return {
    bootstrap: { static_resources: { clusters: [sdsCluster(socketPath)] } },
    common_tls_context: commonTlsContext(),
  };
}

export interface StandaloneOptions {
  readonly socketPath: string;
  /** Loopback port of Envoy's admin interface. */
  readonly adminPort: number;
  /** Where the mTLS listener accepts connections. */
  readonly listen: SocketAddress;
  /** The mTLS upstream every request is routed to. */
  readonly upstream: SocketAddress;
  /** URI SANs a client must present (any CA-valid mesh cert when empty). */
  readonly peerSpiffeIds?: readonly string[];
  /** URI SAN the upstream must present (any CA-valid mesh cert when absent). */
  readonly upstreamSpiffeId?: string;
}

function socketAddress({ host, port }: SocketAddress): JsonObject {
  return { socket_address: { address: host, port_value: port } };
}

/** A complete bootstrap for a standalone Envoy: mTLS in on `listen`, mTLS out to `upstream`. */
export function standaloneBootstrap(options: StandaloneOptions): JsonObject {
  if (!(Number.isInteger(options.adminPort) && options.adminPort >= 1 && options.adminPort <= 65535)) {
    throw new Error(`admin port ${options.adminPort} is not in 1..65535`);
  }
  const httpConnectionManager =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
  const listener: JsonObject = {
    name: LISTENER_NAME,
    address: socketAddress(options.listen),
    filter_chains: [
      {
        filters: [
          {
            name: "envoy.filters.network.http_connection_manager",
            typed_config: {
              "@type": `${TYPE}${httpConnectionManager}`,
              stat_prefix: LISTENER_NAME,
              codec_type: "AUTO",
              route_config: {
                name: LISTENER_NAME,
                virtual_hosts: [
                  {
                    name: UPSTREAM_CLUSTER_NAME,
                    domains: ["*"],
                    routes: [{ match: { prefix: "/" }, route: { cluster: UPSTREAM_CLUSTER_NAME } }],
                  },
                ],
              },
              http_filters: [
                {
                  name: "envoy.filters.http.router",
                  typed_config: { "@type": `${TYPE}envoy.extensions.filters.http.router.v3.Router` },
                },
              ],
            },
          },
        ],
        transport_socket: {
          name: "envoy.transport_sockets.tls",
          typed_config: {
            "@type": `${TYPE}envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`,
            common_tls_context: commonTlsContext(options.peerSpiffeIds),
            require_client_certificate: true,
          },
        },
      },
    ],
  };
  const upstream: JsonObject = {
    name: UPSTREAM_CLUSTER_NAME,
    // A name needs resolving; an IP does not.
    type: isIP(options.upstream.host) === 0 ? "STRICT_DNS" : "STATIC",
    connect_timeout: "5s",
    load_assignment: {
      cluster_name: UPSTREAM_CLUSTER_NAME,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(options.upstream) } }] }],
    },
    transport_socket: {
      name: "envoy.transport_sockets.tls",
      typed_config: {
        "@type": `${TYPE}envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`,
        common_tls_context: commonTlsContext(
          options.upstreamSpiffeId === undefined ? [] : [options.upstreamSpiffeId],
        ),
      },
    },
  };
  return {
    admin: { address: socketAddress({ host: "127.0.0.1", port: options.adminPort }) },
    static_resources: {
      listeners: [listener],
      clusters: [sdsCluster(options.socketPath), upstream],
    },
  };
}
