// The webhook in Kubernetes mode against the fake API server over HTTPS: it waits for the signing
// server to create the root Secret (never creating one itself), then serves a certificate chained
// to it, and keeps its MutatingWebhookConfiguration's caBundle equal to the mesh root, repairing
// edits, saying once what RBAC refuses, and leaving every other field alone.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "node:tls";
import { parseFlags } from "../../common/flags.js";
import { MetricsRegistry } from "../../common/metrics.js";
import { KubeClient, StaticToken } from "../../server/kubernetes/client.js";
import { generateRoot } from "../../server/providers/tresor/ca-material.js";
import { CaBundleKeeper, MUTATING_WEBHOOK_CONFIGURATIONS } from "../../webhook/ca-bundle-keeper.js";
import { WEBHOOK_FLAGS } from "../../webhook/flags.js";
import { startWebhook } from "../../webhook/main.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { captureLog } from "../helpers/log-capture.js";
import { tempDir } from "../helpers/pki.js";

const OSM_NS = "osm-system";
const CONFIG_NAME = "osm-cert-injector";

async function until<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function webhookConfiguration(caBundle: string | undefined): Record<string, unknown> {
  const hook = (name: string, bundle: string | undefined) => ({
    name,
    admissionReviewVersions: ["v1"],
    sideEffects: "None",
    failurePolicy: "Fail",
    reinvocationPolicy: "IfNeeded",
    timeoutSeconds: 5,
    clientConfig: {
      service: { name: "osm-cert-webhook", namespace: OSM_NS, path: "/mutate-pod-v1", port: 9443 },
      ...(bundle === undefined ? {} : { caBundle: bundle }),
    },
    rules: [
      {
        operations: ["CREATE"],
        apiGroups: [""],
        apiVersions: ["v1"],
        resources: ["pods"],
        scope: "Namespaced",
      },
    ],
    namespaceSelector: { matchExpressions: [{ key: "openservicemesh.io/monitored-by", operator: "Exists" }] },
  });
  return {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "MutatingWebhookConfiguration",
    metadata: { name: CONFIG_NAME, labels: { "app.kubernetes.io/name": "osm-cert" } },
    webhooks: [
      hook("inject.osm-cert.openservicemesh.io", caBundle),
      hook("inject-2.osm-cert.openservicemesh.io", undefined),
    ],
  };
}

test("Kubernetes mode: waits for the root Secret, serves under it, keeps the caBundle", async () => {
  const fake = await FakeKubeApiServer.start({ namespaces: [OSM_NS] });
  const dir = await tempDir();
  const kubeconfig = join(dir.path, "kubeconfig.json");
  const user = FakeKubeApiServer.serviceAccountUser(OSM_NS, "osm-cert-webhook").username;
  await writeFile(kubeconfig, fake.kubeconfig(fake.serviceAccountToken(OSM_NS, "osm-cert-webhook")));
  const admin = new KubeClient({
    config: {
      server: fake.url,
      caPem: fake.caPem,
      token: new StaticToken(fake.serviceAccountToken(OSM_NS, "admin"), "test"),
      namespace: OSM_NS,
      source: "test",
    },
  });
  const log = captureLog("webhook-k8s");
  const stop = new AbortController();
  const flags = parseFlags(
    "webhook",
    WEBHOOK_FLAGS,
    [
      "--kubeconfig",
      kubeconfig,
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
      "--agent-image",
      "x/agent:1",
    ],
    {},
  );
  const starting = startWebhook(flags, log.logger, stop.signal, { resyncMs: 150 });
  let webhook: Awaited<typeof starting> | undefined;
  starting.then((running) => (webhook = running)).catch(() => {});
  try {
    // 1. No root yet: not ready, says why, and creates nothing.
    const adminAddress = await until(
      "admin address",
      () => log.lines.find((l) => l.event === "webhook.admin_listening")?.admin as string | undefined,
    );
    await until("a waiting line", () => log.lines.find((l) => l.event === "ca.waiting"));
    const notReady = await fetch(`http://${adminAddress}/readyz`);
    assert.equal(notReady.status, 503);
    assert.match(await notReady.text(), /waiting for the mesh root/);
    await sleep(300);
    assert.equal(fake.objectsOf("secrets", OSM_NS).length, 0, "the webhook never creates the root");
    assert.equal(log.lines.filter((l) => l.event === "ca.waiting").length, 1, "one line, not one per retry");

    // 2. The signing server creates the root: the webhook starts, serving a cert chained to it.
    const root = await generateRoot({
      keyAlgorithm: "ecdsa-p256",
      commonName: "osm.root",
      validityMs: 87_600 * 3_600_000,
    });
    fake.seed("secrets", {
      metadata: { name: "osm-ca-bundle", namespace: OSM_NS },
      data: {
        "ca.crt": Buffer.from(root.caCert).toString("base64"),
        "private.key": Buffer.from(root.privateKey).toString("base64"),
        expiration: Buffer.from(root.expiration).toString("base64"),
      },
    });
    webhook = await starting;
    const [host, port] = webhook.address.split(":");
    const peer = await new Promise<X509Certificate>((resolve, reject) => {
      const socket = connect(
        { host, port: Number(port), ca: root.caCert, servername: "osm-cert-webhook.osm-system.svc" },
        () => {
          resolve(new X509Certificate(socket.getPeerCertificate().raw));
          socket.destroy();
        },
      );
      socket.on("error", reject);
    });
    assert.ok(peer.checkIssued(new X509Certificate(root.caCert)));
    assert.equal((await fetch(`http://${adminAddress}/readyz`)).status, 200);

    // 3. No MutatingWebhookConfiguration yet: said once. Then it appears with a stale caBundle.
    await until("not-found line", () => log.lines.find((l) => l.event === "ca_bundle.not_found"));
    const want = Buffer.from(root.caCert).toString("base64");
    fake.seed(
      "mutatingwebhookconfigurations",
      webhookConfiguration(Buffer.from("stale").toString("base64")) as Parameters<typeof fake.seed>[1],
    );
    const synced = await until("caBundle set", async () => {
      const mwc = await admin.get(MUTATING_WEBHOOK_CONFIGURATIONS, CONFIG_NAME);
      return mwc.webhooks?.every((w) => w.clientConfig?.caBundle === want) ? mwc : undefined;
    });
    assert.equal(synced.webhooks?.length, 2);
    const expected = webhookConfiguration(want).webhooks as Record<string, unknown>[];
    assert.deepEqual(
      synced.webhooks?.map((w) => ({ ...w, clientConfig: { ...w.clientConfig } })),
      expected.map((w) => ({ ...w, clientConfig: { ...(w.clientConfig as object), caBundle: want } })),
      "every other field is left as it was",
    );
    assert.equal(log.lines.filter((l) => l.event === "ca_bundle.not_found").length, 1);

    // 4. Someone edits it by hand: repaired on the next resync; in sync means no writes.
    await admin.patch(MUTATING_WEBHOOK_CONFIGURATIONS, CONFIG_NAME, {
      webhooks: webhookConfiguration("").webhooks as unknown[],
    } as Record<string, unknown>);
    await until("caBundle repaired", async () => {
      const mwc = await admin.get(MUTATING_WEBHOOK_CONFIGURATIONS, CONFIG_NAME);
      return mwc.webhooks?.every((w) => w.clientConfig?.caBundle === want) ? true : undefined;
    });
    const patches = fake.count({ verb: "patch", resource: "mutatingwebhookconfigurations", user });
    await sleep(500);
    assert.equal(
      fake.count({ verb: "patch", resource: "mutatingwebhookconfigurations", user }),
      patches,
      "no writes while in sync",
    );

    // 5. RBAC takes patch away: one clear line, however many resyncs; granted again, repaired.
    const undo = fake.deny({ verb: "patch", resource: "mutatingwebhookconfigurations", user });
    await admin.patch(MUTATING_WEBHOOK_CONFIGURATIONS, CONFIG_NAME, {
      webhooks: webhookConfiguration(undefined).webhooks as unknown[],
    } as Record<string, unknown>);
    const denied = await until("forbidden line", () =>
      log.lines.find((l) => l.event === "ca_bundle.forbidden"),
    );
    assert.match(
      String(denied.msg),
      /cannot patch mutatingwebhookconfigurations "osm-cert-injector".*grant "patch".*retrying/,
    );
    await sleep(800);
    assert.equal(log.lines.filter((l) => l.event === "ca_bundle.forbidden").length, 1, "said once");
    undo();
    await until("caBundle repaired after RBAC fix", async () => {
      const mwc = await admin.get(MUTATING_WEBHOOK_CONFIGURATIONS, CONFIG_NAME);
      return mwc.webhooks?.every((w) => w.clientConfig?.caBundle === want) ? true : undefined;
    });
  } finally {
    stop.abort();
    await webhook?.close();
    await admin.close();
    await fake.close();
    await dir.remove();
  }
});

test("caBundle keepers racing: the resourceVersion precondition turns the loser's write into a Conflict, then in sync", async () => {
  const fake = await FakeKubeApiServer.start({ namespaces: [OSM_NS] });
  const clients: KubeClient[] = [];
  const client = (name: string) => {
    const made = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken(fake.serviceAccountToken(OSM_NS, name), "test"),
        namespace: OSM_NS,
        source: "test",
      },
      retry: { baseDelayMs: 10, maxDelayMs: 40 },
    });
    clients.push(made);
    return made;
  };
  try {
    const root = (
      await generateRoot({
        keyAlgorithm: "ecdsa-p256",
        commonName: "osm.root",
        validityMs: 3_600_000,
      })
    ).caCert;
    const provider = {
      trustBundle: () => ({ roots: [root], version: "1" }),
      onTrustBundleChange: () => () => {},
    };
    fake.seed(
      "mutatingwebhookconfigurations",
      webhookConfiguration(undefined) as Parameters<typeof fake.seed>[1],
    );
    // Both read before either writes: each patch waits until both reads have answered.
    let reads = 0;
    let bothRead: () => void = () => {};
    const barrier = new Promise<void>((resolve) => {
      bothRead = resolve;
    });
    const keepers = ["a", "b"].map((name) => {
      const real = client(`webhook-${name}`);
      return new CaBundleKeeper({
        client: {
          get: async (...args: Parameters<KubeClient["get"]>) => {
            const object = await real.get(...args);
            if (++reads === 2) bothRead();
            return object;
          },
          patch: async (...args: Parameters<KubeClient["patch"]>) => {
            await barrier;
            return real.patch(...args);
          },
        } as Pick<KubeClient, "get" | "patch">,
        name: CONFIG_NAME,
        provider,
        logger: captureLog(name).logger,
        metrics: new MetricsRegistry(),
      });
    });
    // Both read the same version; exactly one write lands.
    const results = (await Promise.all(keepers.map((k) => k.syncOnce()))).sort();
    assert.deepEqual(results, ["conflict", "patched"]);
    assert.deepEqual(await Promise.all(keepers.map((k) => k.syncOnce())), ["in_sync", "in_sync"]);
    const stored = fake.object("mutatingwebhookconfigurations", undefined, CONFIG_NAME) as {
      webhooks: { clientConfig: { caBundle?: string } }[];
    };
    const want = Buffer.from(root).toString("base64");
    assert.deepEqual(
      stored.webhooks.map((w) => w.clientConfig.caBundle),
      [want, want],
    );
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await fake.close();
  }
});
