// The bootstrap against a real agent: `osm-cert envoy-bootstrap --full` is read with Envoy's
// canonical protos, and then an SDS client does what Envoy would do with it — connect to the pipe
// address of the cluster the secret configs name, open one StreamSecrets stream per SdsSecretConfig
// (Envoy's api_type GRPC) — against a real `osm-cert agent` fed by a real `osm-cert server`.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { BOOTSTRAP_TYPE, EnvoyConfigProtos } from "../helpers/envoy-config-protos.js";
import { connectSds, decodeSecrets, SdsStream } from "../helpers/envoy-sds-client.js";
import { tempDir } from "../helpers/pki.js";
import {
  CLI,
  type CliProcess,
  issueBootstrapDir,
  startBootstrapAgent,
  startServerProcess,
} from "../helpers/processes.js";

type Json = Record<string, unknown>;

function printBootstrap(args: string[]): Promise<string> {
  return new Promise((done, fail) =>
    execFile(process.execPath, [CLI, "envoy-bootstrap", ...args], (error, stdout, stderr) =>
      error === null ? done(stdout) : fail(new Error(`${error.message}: ${stderr}`)),
    ),
  );
}

interface SecretUse {
  readonly name: string;
  readonly role: "certificate" | "validation";
  readonly cluster: string;
}

describe("envoy-bootstrap against a running agent", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: CliProcess;
  let agent: CliProcess;
  const clusters = new Map<string, Json>();
  const uses: SecretUse[] = [];

  before(async () => {
    dir = await tempDir();
    const caDir = join(dir.path, "ca");
    const socket = join(dir.path, "sds.sock");
    let address: string;
    ({ server, address } = await startServerProcess(caDir));
    const out = await issueBootstrapDir(caDir, join(dir.path, "bootstrap"), "bookstore", "bookstore-v2");
    agent = startBootstrapAgent({
      server: address,
      bootstrapDir: out,
      namespace: "bookstore",
      serviceAccount: "bookstore-v2",
      socket,
    });
    await agent.waitForEvent("agent.started");

    const bootstrap = JSON.parse(
      await printBootstrap(["--sds-socket", socket, "--full", "--format", "json"]),
    );
    // Gather, by message type, what Envoy would act on: clusters, and which secret configs name what.
    new EnvoyConfigProtos().read(BOOTSTRAP_TYPE, bootstrap, (type, message) => {
      if (type === "envoy.config.cluster.v3.Cluster") clusters.set(message.name as string, message);
      if (type !== "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext") return;
      const viaCluster = (config: Json) => {
        const source = (config.sds_config as Json).api_config_source as Json;
        assert.equal(source.api_type, "GRPC");
        const [service] = source.grpc_services as Json[];
        return ((service as Json).envoy_grpc as Json).cluster_name as string;
      };
      for (const config of message.tls_certificate_sds_secret_configs as Json[]) {
        uses.push({ name: config.name as string, role: "certificate", cluster: viaCluster(config) });
      }
      const validation = message.validation_context_sds_secret_config as Json;
      uses.push({ name: validation.name as string, role: "validation", cluster: viaCluster(validation) });
    });
  });

  after(async () => {
    await agent?.stop();
    await server?.stop();
    await dir?.remove();
  });

  /** The socket Envoy would dial for a secret: the pipe address of the cluster its config names. */
  function socketOf(cluster: string): string {
    const definition = clusters.get(cluster);
    assert.ok(definition, `cluster ${cluster} is defined`);
    const endpoints = (definition.load_assignment as Json).endpoints as Json[];
    const lb = ((endpoints[0] as Json).lb_endpoints as Json[])[0] as Json;
    const address = (lb.endpoint as Json).address as Json;
    assert.ok(address.pipe, `${cluster} is reached through a pipe`);
    return (address.pipe as Json).path as string;
  }

  async function fetchOne(name: string, cluster: string) {
    const stream = new SdsStream(connectSds(socketOf(cluster)));
    try {
      stream.request([name]);
      const response = await stream.next(0, 15_000);
      assert.ok(response, `the agent answers "${name}"`);
      const secrets = decodeSecrets(response);
      assert.deepEqual(
        secrets.map((s) => s.name),
        [name],
      );
      return secrets[0] as (typeof secrets)[number];
    } finally {
      stream.end();
    }
  }

  test("every SdsSecretConfig of the bootstrap is answered by the agent, in its role", async () => {
    // Listener and upstream cluster each take a certificate and a trust bundle.
    assert.deepEqual(
      uses.map((u) => `${u.role}:${u.name}`),
      ["certificate:default", "validation:ROOTCA", "certificate:default", "validation:ROOTCA"],
    );
    const served = new Map<string, Awaited<ReturnType<typeof fetchOne>>>();
    for (const use of uses) {
      const secret = await fetchOne(use.name, use.cluster);
      if (use.role === "certificate") {
        assert.ok(secret.certificateChain && secret.privateKey, `${use.name} carries a chain and its key`);
        assert.equal(secret.trustedCa, undefined);
      } else {
        assert.ok(secret.trustedCa, `${use.name} carries the trust bundle`);
        assert.equal(secret.privateKey, undefined);
      }
      served.set(use.role, secret);
    }
    // What the listener would present verifies against what it would trust: a working mTLS pair.
    const leaf = new X509Certificate(served.get("certificate")?.certificateChain as string);
    const root = new X509Certificate(served.get("validation")?.trustedCa as string);
    assert.ok(leaf.checkPrivateKey(createPrivateKey(served.get("certificate")?.privateKey as string)));
    assert.ok(leaf.verify(root.publicKey), "the served leaf is signed by the served root");
    assert.match(leaf.subjectAltName ?? "", /URI:spiffe:\/\/cluster\.local\/ns\/bookstore\/sa\/bookstore-v2/);
  });

  test("OSM's names, over the same cluster, are answered too (the README's second route)", async () => {
    const cluster = uses[0]?.cluster as string;
    const cert = await fetchOne("service-cert:bookstore/bookstore-v2", cluster);
    assert.ok(cert.certificateChain && cert.privateKey);
    for (const name of [
      "root-cert-for-mtls-inbound:bookstore/bookstore",
      "root-cert-for-mtls-outbound:bookbuyer/bookbuyer",
    ]) {
      assert.ok((await fetchOne(name, cluster)).trustedCa, name);
    }
  });
});
