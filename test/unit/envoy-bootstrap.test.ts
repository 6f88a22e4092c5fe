// `osm-cert envoy-bootstrap` output, read as Envoy reads it: with Envoy's canonical protos
// (envoy.config.bootstrap.v3.Bootstrap, every Any resolved), strictly, and then checked for what
// protos cannot say: every cluster a config points at exists, every secret name is one the agent
// serves, in the role the agent serves it.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, test } from "node:test";
import { parse as parseYaml } from "yaml";
import { SDS_CLUSTER_NAME, UPSTREAM_CLUSTER_NAME } from "../../agent/envoy-bootstrap.js";
import { classifySecretName, DEFAULT_CERT_NAME, ROOT_CA_NAME } from "../../agent/sds/resources.js";
import { makeIdentity } from "../../common/identity.js";
import { BOOTSTRAP_TYPE, EnvoyConfigError, EnvoyConfigProtos } from "../helpers/envoy-config-protos.js";
import { CLI } from "../helpers/processes.js";

const SOCKET = "/var/run/osm-cert/sds/sds.sock";
const COMMON_TLS_CONTEXT = "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext";
const protos = new EnvoyConfigProtos();
const identity = makeIdentity("bookstore-v2", "bookstore");

type Json = Record<string, unknown>;

/** The real CLI; stdout is the document, so it is taken whole, not as log lines. */
function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    execFile(
      process.execPath,
      [CLI, "envoy-bootstrap", ...args],
      { env: { ...process.env, OSM_CERT_SDS_SOCKET: "", ...env } },
      (error, stdout, stderr) => {
        if (error !== null && typeof error.code !== "number") reject(error);
        else resolve({ code: error === null ? 0 : (error.code as number), stdout, stderr });
      },
    );
  });
}

const documents = new Map<string, Promise<Json>>();

/** Runs the command in both formats and checks they print the same document (once per argv). */
function document(args: string[]): Promise<Json> {
  const key = JSON.stringify(args);
  let printed = documents.get(key);
  if (printed === undefined) {
    printed = printDocument(args);
    documents.set(key, printed);
  }
  // A copy each time: tests mutate what they get.
  return printed.then((doc) => structuredClone(doc));
}

async function printDocument(args: string[]): Promise<Json> {
  const yaml = await cli([...args, "--format", "yaml"]);
  const json = await cli([...args, "--format", "json"]);
  assert.equal(yaml.code, 0, yaml.stderr);
  assert.equal(json.code, 0, json.stderr);
  const fromYaml = parseYaml(yaml.stdout) as Json;
  assert.deepEqual(fromYaml, JSON.parse(json.stdout), "YAML and JSON carry the same document");
  return fromYaml;
}

interface References {
  clusters: string[];
  /** Cluster names pointed at: gRPC services, routes, load assignments. */
  referenced: { name: string; path: string }[];
  certificateSecrets: string[];
  validationSecrets: string[];
  sdsSecretConfigs: Json[];
  any: string[];
}

/** Reads a Bootstrap (or another Envoy message) and gathers what points where, by message type. */
function readWithReferences(json: unknown, typeName = BOOTSTRAP_TYPE): References {
  const refs: References = {
    clusters: [],
    referenced: [],
    certificateSecrets: [],
    validationSecrets: [],
    sdsSecretConfigs: [],
    any: [],
  };
  protos.read(typeName, json, (type, message, path) => {
    switch (type) {
      case "google.protobuf.Any":
        refs.any.push(message["@type"] as string);
        break;
      case "envoy.config.cluster.v3.Cluster":
        refs.clusters.push(message.name as string);
        break;
      case "envoy.config.core.v3.GrpcService.EnvoyGrpc":
        refs.referenced.push({ name: message.cluster_name as string, path });
        break;
      case "envoy.config.route.v3.RouteAction":
        refs.referenced.push({ name: message.cluster as string, path });
        break;
      case "envoy.config.endpoint.v3.ClusterLoadAssignment":
        refs.referenced.push({ name: message.cluster_name as string, path });
        break;
      case "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig":
        refs.sdsSecretConfigs.push(message);
        break;
      case COMMON_TLS_CONTEXT: {
        const certs = (message.tls_certificate_sds_secret_configs ?? []) as Json[];
        refs.certificateSecrets.push(...certs.map((c) => c.name as string));
        const combined = message.combined_validation_context as Json | undefined;
        const validation = (message.validation_context_sds_secret_config ??
          combined?.validation_context_sds_secret_config) as Json | undefined;
        if (validation !== undefined) refs.validationSecrets.push(validation.name as string);
        break;
      }
    }
  });
  return refs;
}

function assertReferencesResolve(refs: References, clusters = refs.clusters): void {
  for (const { name, path } of refs.referenced) {
    assert.ok(clusters.includes(name), `${path} points at cluster "${name}", which is not defined`);
  }
}

function assertSecretsServed(refs: References): void {
  assert.ok(refs.sdsSecretConfigs.length > 0, "some SdsSecretConfig");
  for (const name of refs.certificateSecrets) {
    assert.equal(classifySecretName(name, identity).kind, "certificate", `${name} serves a certificate`);
  }
  for (const name of refs.validationSecrets) {
    assert.equal(classifySecretName(name, identity).kind, "trust-bundle", `${name} serves the trust bundle`);
  }
  for (const config of refs.sdsSecretConfigs) {
    assert.notEqual(classifySecretName(config.name as string, identity).kind, "unknown");
    assert.deepEqual(config.sds_config, {
      resource_api_version: "V3",
      initial_fetch_timeout: "0s",
      api_config_source: {
        api_type: "GRPC",
        transport_api_version: "V3",
        set_node_on_first_message_only: true,
        grpc_services: [{ envoy_grpc: { cluster_name: SDS_CLUSTER_NAME } }],
      },
    });
  }
}

function assertSdsCluster(bootstrap: Json): void {
  const clusters = (bootstrap.static_resources as Json).clusters as Json[];
  const sds = clusters.find((c) => c.name === SDS_CLUSTER_NAME);
  assert.ok(sds, "the SDS cluster is defined");
  assert.equal(sds.type, "STATIC");
  assert.deepEqual(sds.load_assignment, {
    cluster_name: SDS_CLUSTER_NAME,
    endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: SOCKET } } } }] }],
  });
  // gRPC needs HTTP/2: the only protocol option, set explicitly.
  const options = sds.typed_extension_protocol_options as Json;
  assert.deepEqual(Object.keys(options), ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]);
  const decoded = protos.read(
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    (({ "@type": _type, ...rest }) => rest)(
      options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] as Json,
    ),
  );
  assert.deepEqual(decoded, { explicit_http_config: { http2_protocol_options: {} } });
}

describe("the fragment", () => {
  test("bootstrap parses as a Bootstrap, common_tls_context as a CommonTlsContext; names resolve", async () => {
    const doc = await document(["--sds-socket", SOCKET]);
    assert.deepEqual(Object.keys(doc).sort(), ["bootstrap", "common_tls_context"]);
    const boot = readWithReferences(doc.bootstrap);
    assert.deepEqual(boot.clusters, [SDS_CLUSTER_NAME]);
    assert.deepEqual(boot.any, [
      "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    ]);
    assertSdsCluster(doc.bootstrap as Json);
    assertReferencesResolve(boot);

    const tls = readWithReferences(doc.common_tls_context, COMMON_TLS_CONTEXT);
    assert.deepEqual(tls.certificateSecrets, [DEFAULT_CERT_NAME]);
    assert.deepEqual(tls.validationSecrets, [ROOT_CA_NAME]);
    assertSecretsServed(tls);
    // The secrets' gRPC source is the fragment's cluster.
    assertReferencesResolve(tls, boot.clusters);
  });

  test("the socket path can come from OSM_CERT_SDS_SOCKET", async () => {
    const result = await cli(["--format", "json"], { OSM_CERT_SDS_SOCKET: "/tmp/from-env.sock" });
    assert.equal(result.code, 0, result.stderr);
    const doc = JSON.parse(result.stdout) as { bootstrap: Json };
    assert.match(JSON.stringify(doc.bootstrap), /"path":"\/tmp\/from-env\.sock"/);
  });
});

describe("--full: a standalone Envoy doing mTLS in and out", () => {
  test("parses as a Bootstrap; every cluster and secret it names exists", async () => {
    const doc = await document(["--sds-socket", SOCKET, "--full"]);
    const refs = readWithReferences(doc);
    assert.deepEqual(refs.clusters.sort(), [UPSTREAM_CLUSTER_NAME, SDS_CLUSTER_NAME].sort());
    assertReferencesResolve(refs);
    assertSecretsServed(refs);
    assertSdsCluster(doc);
    // Both sides, listener and upstream, present `default` and trust `ROOTCA`.
    assert.deepEqual(refs.certificateSecrets, [DEFAULT_CERT_NAME, DEFAULT_CERT_NAME]);
    assert.deepEqual(refs.validationSecrets, [ROOT_CA_NAME, ROOT_CA_NAME]);
    assert.deepEqual(refs.any.sort(), [
      "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
      "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
      "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
      "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
      "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    ]);

    const text = JSON.stringify(doc);
    assert.match(
      text,
      /"admin":\{"address":\{"socket_address":\{"address":"127\.0\.0\.1","port_value":15000\}\}\}/,
    );
    assert.match(text, /"require_client_certificate":true/);
  });

  test("--peer-spiffe-id and --upstream-spiffe-id become URI SAN matchers beside ROOTCA", async () => {
    const client = "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer";
    const server = "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2";
    const doc = await document([
      "--sds-socket",
      SOCKET,
      "--full",
      "--peer-spiffe-id",
      client,
      "--upstream-spiffe-id",
      server,
      "--listen",
      "[::]:9443",
      "--upstream",
      "bookstore.bookstore.svc.cluster.local:14001",
    ]);
    const refs = readWithReferences(doc);
    assertReferencesResolve(refs);
    assertSecretsServed(refs);
    assert.deepEqual(refs.validationSecrets, [ROOT_CA_NAME, ROOT_CA_NAME]);
    const text = JSON.stringify(doc);
    for (const id of [client, server]) {
      assert.ok(
        text.includes(`"match_typed_subject_alt_names":[{"san_type":"URI","matcher":{"exact":"${id}"}}]`),
        id,
      );
    }
    // A DNS name is resolved by Envoy (STRICT_DNS); an IP would be STATIC.
    const upstream = ((doc.static_resources as Json).clusters as Json[]).find(
      (c) => c.name === UPSTREAM_CLUSTER_NAME,
    );
    assert.equal(upstream?.type, "STRICT_DNS");
    assert.match(text, /"socket_address":\{"address":"::","port_value":9443\}/);
  });
});

describe("the checks above can fail", () => {
  test("an unknown field, also inside an Any, is refused with its path", async () => {
    const doc = await document(["--sds-socket", SOCKET, "--full"]);
    const misspelt = structuredClone(doc) as { static_resources: { clusters: Json[] } };
    (misspelt.static_resources.clusters[0] as Json).conect_timeout = "1s";
    assert.throws(
      () => protos.read(BOOTSTRAP_TYPE, misspelt),
      /clusters\[0\]\.conect_timeout: unknown field/,
    );

    const inAny = JSON.parse(JSON.stringify(doc).replace('"stat_prefix"', '"stat_prefx"'));
    assert.throws(
      () => protos.read(BOOTSTRAP_TYPE, inAny),
      /stat_prefx: unknown field of .*HttpConnectionManager/,
    );
  });

  test("an unknown @type, a bad enum or duration, two oneof members, a broken validation rule", async () => {
    const doc = await document(["--sds-socket", SOCKET, "--full"]);
    const text = JSON.stringify(doc);
    const cases: [string, RegExp][] = [
      [
        text.replace("v3.Router", "v3.Routr"),
        /no message type envoy\.extensions\.filters\.http\.router\.v3\.Routr/,
      ],
      [text.replace('"api_type":"GRPC"', '"api_type":"GRPCS"'), /"GRPCS" is not a value of enum/],
      [text.replace('"connect_timeout":"1s"', '"connect_timeout":"1 second"'), /not a proto3 JSON duration/],
      [text.replace('"connect_timeout":"1s"', '"connect_timeout":"0s"'), /connect_timeout: must be > 0/],
      [
        text
          .replace('{"path":"/var', '{"mode":384,"path":"/var')
          .replace('"pipe":', '"socket_address":{"address":"x","port_value":1},"pipe":'),
        /oneof address already has socket_address/,
      ],
      [text.replace(`"name":"${SDS_CLUSTER_NAME}",`, ""), /\.name: needs at least 1 characters/],
      [text.replace('"port_value":15000', '"port_value":70000'), /port_value: must be <= 65535/],
    ];
    for (const [broken, error] of cases) {
      assert.notEqual(broken, text, `the mutation for ${error} applies`);
      assert.throws(() => protos.read(BOOTSTRAP_TYPE, JSON.parse(broken)), error);
    }
    assert.throws(() => protos.read(BOOTSTRAP_TYPE, JSON.parse(cases[0]?.[0] ?? "")), EnvoyConfigError);
  });

  test("a reference to an undefined cluster, or a secret name the agent does not serve, is caught", async () => {
    const doc = await document(["--sds-socket", SOCKET, "--full"]);
    const dangling = JSON.parse(
      JSON.stringify(doc).replace(`"cluster":"${UPSTREAM_CLUSTER_NAME}"`, '"cluster":"nowhere"'),
    );
    assert.throws(
      () => assertReferencesResolve(readWithReferences(dangling)),
      /cluster "nowhere", which is not defined/,
    );

    const unserved = JSON.parse(JSON.stringify(doc).replace('"name":"ROOTCA"', '"name":"root-ca"'));
    assert.throws(() => assertSecretsServed(readWithReferences(unserved)));
    const swapped = JSON.parse(
      JSON.stringify(doc)
        .replaceAll('"name":"ROOTCA"', '"name":"TMP"')
        .replaceAll('"name":"default"', '"name":"ROOTCA"')
        .replaceAll('"name":"TMP"', '"name":"default"'),
    );
    assert.throws(() => assertSecretsServed(readWithReferences(swapped)), /serves a certificate/);
  });
});

describe("bad input: exit 2 with one line", () => {
  const cases: [string, string[], RegExp][] = [
    [
      "a relative socket path",
      ["--sds-socket", "run/sds.sock"],
      /invalid --sds-socket: "run\/sds\.sock" is not an absolute path/,
    ],
    [
      "a path too long for sun_path",
      ["--sds-socket", `/${"s".repeat(107)}`],
      /is 108 bytes; a Unix socket path holds at most 107/,
    ],
    ["a directory", ["--sds-socket", "/var/run/"], /names a directory/],
    ["no socket", [], /missing required flag --sds-socket \(or OSM_CERT_SDS_SOCKET\)/],
    [
      "an unknown format",
      ["--sds-socket", SOCKET, "--format", "toml"],
      /invalid --format: "toml" is not one of yaml, json/,
    ],
    [
      "a bad SPIFFE ID",
      ["--sds-socket", SOCKET, "--full", "--peer-spiffe-id", "bookbuyer"],
      /invalid --peer-spiffe-id: "bookbuyer" is not a SPIFFE ID/,
    ],
    [
      "a bad upstream",
      ["--sds-socket", SOCKET, "--full", "--upstream", "10.0.0.1"],
      /invalid --upstream: "10\.0\.0\.1" is not HOST:PORT/,
    ],
    [
      "an upstream without a real port or name",
      ["--sds-socket", SOCKET, "--full", "--upstream", "bookstore:0"],
      /invalid --upstream: "bookstore:0" has port 0/,
    ],
    [
      "a listener on no host",
      ["--sds-socket", SOCKET, "--full", "--listen", ":8443"],
      /invalid --listen: "" is neither an IP address nor a DNS name/,
    ],
    ["a bad admin port", ["--sds-socket", SOCKET, "--full", "--admin-port", "0"], /invalid --admin-port/],
    [
      "a --full flag without --full",
      ["--sds-socket", SOCKET, "--listen=0.0.0.0:8443"],
      /--listen applies only with --full/,
    ],
    [
      "an unknown flag",
      ["--sds-socket", SOCKET, "--sds-sokcet", "x"],
      /envoy-bootstrap: Unknown option '--sds-sokcet'/,
    ],
  ];
  for (const [what, args, message] of cases) {
    test(what, async () => {
      const result = await cli(args);
      assert.equal(result.code, 2, result.stderr);
      assert.equal(result.stdout, "");
      assert.match(result.stderr, message);
      assert.equal(result.stderr.trimEnd().split("\n").length, 1, result.stderr);
    });
  }

  test("a 107-byte path is the longest accepted", async () => {
    const result = await cli(["--sds-socket", `/${"s".repeat(106)}`, "--format", "json"]);
    assert.equal(result.code, 0, result.stderr);
  });

  test("--help lists every flag with its environment variable, exit 0", async () => {
    const result = await cli(["--help"]);
    assert.equal(result.code, 0);
    for (const flag of ["--sds-socket", "--full", "--format", "--listen", "--upstream", "--peer-spiffe-id"]) {
      assert.ok(result.stdout.includes(flag), flag);
    }
    assert.match(result.stdout, /env OSM_CERT_SDS_SOCKET/);
  });
});
