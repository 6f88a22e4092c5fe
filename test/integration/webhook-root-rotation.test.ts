// The webhook's own certificate through a root rotation (issue 9, Deliver 4): the webhook follows the
// rotation state beside the root (the CA directory, or the rotation Secret in Kubernetes mode; its
// caBundle kept in a MutatingWebhookConfiguration on the fake API server). While the rotation runs through every
// phase, the certificate the webhook serves always chains to a root in the caBundle the API server
// holds (zero broken calls); the caBundle holds old + new while both are trusted; the serving
// certificate moves under the new root as soon as it signs; at the end only the new root is left.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "node:tls";
import { parseFlags } from "../../common/flags.js";
import { decodeCertificates, encodePem } from "../../common/pem.js";
import { KubeClient, StaticToken } from "../../server/kubernetes/client.js";
import { DirectoryCaStore } from "../../server/providers/tresor/directory-store.js";
import { followedSecretCaStore } from "../../server/providers/tresor/secret-rotation-store.js";
import { rotateRoot } from "../../server/rotation/root-rotation.js";
import { MUTATING_WEBHOOK_CONFIGURATIONS } from "../../webhook/ca-bundle-keeper.js";
import { WEBHOOK_FLAGS } from "../../webhook/flags.js";
import { startWebhook } from "../../webhook/main.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { captureLog } from "../helpers/log-capture.js";
import { openTestCa, tempDir } from "../helpers/pki.js";

const OSM_NS = "osm-system";
const CONFIG_NAME = "osm-cert-injector";

function servedCertificate(address: string): Promise<X509Certificate> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(":")),
    Number(address.slice(address.lastIndexOf(":") + 1)),
  ];
  return new Promise((resolve, reject) => {
    const socket = connect(
      { host, port, servername: "osm-cert-webhook.osm-system.svc", rejectUnauthorized: false },
      () => {
        const peer = socket.getPeerX509Certificate();
        socket.destroy();
        if (peer === undefined) reject(new Error("no peer certificate"));
        else resolve(peer);
      },
    );
    socket.on("error", reject);
  });
}

for (const mode of ["directory", "kubernetes"] as const) {
  test(`the webhook's certificate and caBundle follow a root rotation through every phase (${mode} mode)`, () =>
    rotateUnderWebhook(mode));
}

async function rotateUnderWebhook(mode: "directory" | "kubernetes"): Promise<void> {
  const fake = await FakeKubeApiServer.start({ namespaces: [OSM_NS] });
  const dir = await tempDir();
  const caDir = join(dir.path, "ca");
  const oldRoot = (await openTestCa(caDir)).trustBundle().roots[0] as string;
  const admin = new KubeClient({
    config: {
      server: fake.url,
      caPem: fake.caPem,
      token: new StaticToken(fake.serviceAccountToken(OSM_NS, "admin"), "test"),
      namespace: OSM_NS,
      source: "test",
    },
  });
  await admin.create(MUTATING_WEBHOOK_CONFIGURATIONS, {
    metadata: { name: CONFIG_NAME },
    webhooks: [
      {
        name: "inject.osm-cert.openservicemesh.io",
        admissionReviewVersions: ["v1"],
        sideEffects: "None",
        clientConfig: {
          service: { name: "osm-cert-webhook", namespace: OSM_NS, path: "/mutate-pod-v1", port: 9443 },
        },
      },
    ],
  } as never);
  // Kubernetes mode: the same root, kept in the osm-ca-bundle Secret; the rotation in its -rotation Secret.
  const store =
    mode === "directory"
      ? new DirectoryCaStore(caDir)
      : followedSecretCaStore(admin, OSM_NS, "osm-ca-bundle");
  if (mode === "kubernetes") {
    const material = await new DirectoryCaStore(caDir).load();
    assert.ok(material !== null);
    await store.createIfAbsent(material);
  }
  const kubeconfig = join(dir.path, "kubeconfig.json");
  await writeFile(kubeconfig, fake.kubeconfig(fake.serviceAccountToken(OSM_NS, "osm-cert-webhook")));
  const log = captureLog("webhook-rotation");
  const stop = new AbortController();
  const flags = parseFlags(
    "webhook",
    WEBHOOK_FLAGS,
    [
      ...(mode === "directory" ? ["--ca-dir", caDir] : []),
      "--kubeconfig",
      kubeconfig,
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
    ],
    { OSM_CERT_AGENT_IMAGE: "x/agent:1" },
  );
  const webhook = await startWebhook(flags, log.logger, stop.signal, { resyncMs: 100 });
  const caBundle = async (): Promise<string[]> => {
    const config = await admin.get(MUTATING_WEBHOOK_CONFIGURATIONS, CONFIG_NAME);
    const bundle = config.webhooks?.[0]?.clientConfig?.caBundle;
    if (bundle === undefined) return [];
    return decodeCertificates(Buffer.from(bundle, "base64").toString()).map((der) =>
      encodePem("CERTIFICATE", der),
    );
  };
  const issuerIn = (cert: X509Certificate, roots: string[]) =>
    roots.find((pem) => {
      const root = new X509Certificate(pem);
      return cert.checkIssued(root) && cert.verify(root.publicKey);
    });

  const seenBundles: string[][] = [];
  const failures: string[] = [];
  let newRootServedWith: string[] | null = null;
  let watching = true;
  // The API server's view, every few tens of ms: is the webhook's cert trusted by the caBundle?
  const watcher = (async () => {
    while (watching) {
      const roots = await caBundle();
      const served = await servedCertificate(webhook.address);
      if (roots.length > 0 && issuerIn(served, roots) === undefined) {
        failures.push(`serial ${served.serialNumber} not under the caBundle's ${roots.length} root(s)`);
      }
      if (roots.length > 0 && seenBundles.at(-1)?.join() !== roots.join()) seenBundles.push(roots);
      if (newRootServedWith === null && roots.length > 0 && issuerIn(served, [oldRoot]) === undefined) {
        newRootServedWith = roots;
      }
      await sleep(30);
    }
  })();
  try {
    // The rotation starts once the API server holds the webhook's first caBundle (old root alone).
    const first = Date.now() + 15_000;
    while (seenBundles.length === 0 && Date.now() < first) await sleep(30);
    assert.equal(seenBundles.length, 1, "the webhook published its first caBundle");
    const said: string[] = [];
    const rotation = store.rotation;
    assert.ok(rotation !== undefined);
    await rotateRoot({
      loadPlainRoot: () => store.load(),
      rotation,
      newRoot: null,
      rootOptions: { keyAlgorithm: "ecdsa-p256", commonName: "osm.root.2", validityMs: 86_400_000 },
      probe: null,
      waitAgentsMs: 2_000,
      renewWindowMs: 100,
      maxServiceCertValidityMs: 2_000,
      clockSkewMs: 0,
      followLagMs: 500,
      again: false,
      say: (line) => said.push(line),
    });
    // The followers see the final state within a poll.
    const deadline = Date.now() + 15_000;
    while (seenBundles.at(-1)?.length !== 1 && Date.now() < deadline) await sleep(50);
    watching = false;
    await watcher;

    assert.deepEqual(failures, [], "the served certificate always chained to the caBundle");
    const newRoot = seenBundles.at(-1)?.[0] as string;
    assert.notEqual(newRoot, oldRoot);
    assert.deepEqual(
      seenBundles.map((roots) => roots.map((r) => (r === oldRoot ? "old" : r === newRoot ? "new" : "other"))),
      [["old"], ["old", "new"], ["new"]],
      "caBundle: old, then old + new during the rotation, then new",
    );
    assert.ok(newRootServedWith !== null, "the webhook moved to a certificate under the new root");
    assert.equal((newRootServedWith as string[]).length, 2, "while the caBundle still held both roots");
    assert.ok(log.lines.some((l) => l.event === "serving_cert.renewed"));
  } finally {
    watching = false;
    await watcher.catch(() => undefined);
    stop.abort();
    await webhook.close();
    await admin.close();
    await fake.close();
    await dir.remove();
  }
}
