// `osm-cert renew` end to end (issue 9, Deliver 3): with real agents beside a real server,
// `renew --identity NS/SA` makes exactly that agent's SDS `default` change on its open stream while
// another identity of the same namespace keeps its certificate; bad flags are refused with exit
// code 2; in Kubernetes mode the order lands in the osm-cert-renew-orders ConfigMap of the fake API
// server and reaches every replica following it, once each however often they read it.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { MetricsRegistry } from "../../common/metrics.js";
import { CONFIG_MAPS, KubeClient, loadKubeconfig } from "../../server/kubernetes/client.js";
import type { CertificateProvider } from "../../server/providers/provider.js";
import { followRenewOrders } from "../../server/renew/follow-renew-orders.js";
import { ConfigMapRenewOrderStore } from "../../server/renew/renew-order-stores.js";
import { parseOrders, RENEW_ORDERS_CONFIG_MAP, RENEW_ORDERS_KEY } from "../../server/renew/renew-orders.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { connectSds, decodeSecrets, SdsStream } from "../helpers/envoy-sds-client.js";
import { captureLog } from "../helpers/log-capture.js";
import { tempDir } from "../helpers/pki.js";
import { issueBootstrapDir, runCli, startBootstrapAgent, startServerProcess } from "../helpers/processes.js";

const dir = await tempDir();
after(() => dir.remove());

/** The serial of every `default` the stream has delivered so far. */
function defaultSerials(stream: SdsStream): string[] {
  const serials: string[] = [];
  for (const response of stream.responses) {
    for (const secret of decodeSecrets(response)) {
      if (secret.name === "default" && secret.certificateChain) {
        serials.push(new X509Certificate(secret.certificateChain).serialNumber);
      }
    }
  }
  return serials;
}

/** Follows an SDS stream like Envoy: requests `default`, ACKs each response. */
function follow(stream: SdsStream): () => void {
  let stopped = false;
  stream.request(["default"]);
  void (async () => {
    let seen = 0;
    while (!stopped) {
      const response = await stream.next(seen, 500).catch(() => null);
      if (response === null) continue;
      seen++;
      stream.request(["default"], { version: response.version_info, nonce: response.nonce });
    }
  })();
  return () => {
    stopped = true;
  };
}

test("renew --identity changes exactly that agent's SDS default on its open stream", async () => {
  const caDir = join(dir.path, "ca");
  const { server, address } = await startServerProcess(caDir);
  const agents = [];
  const streams: SdsStream[] = [];
  const stops: (() => void)[] = [];
  try {
    for (const sa of ["bookstore-v1", "bookstore-v2"]) {
      const bootstrapDir = await issueBootstrapDir(caDir, join(dir.path, sa), "bookstore", sa);
      const socket = join(dir.path, `${sa}.sock`);
      const agent = startBootstrapAgent({
        server: address,
        bootstrapDir,
        namespace: "bookstore",
        serviceAccount: sa,
        socket,
        name: sa,
      });
      agents.push(agent);
      await agent.waitForEvent("agent.started", 20_000);
      const stream = new SdsStream(connectSds(socket));
      streams.push(stream);
      stops.push(follow(stream));
    }
    const [v1, v2] = streams as [SdsStream, SdsStream];
    const deadline = Date.now() + 10_000;
    while ((defaultSerials(v1).length === 0 || defaultSerials(v2).length === 0) && Date.now() < deadline) {
      await sleep(50);
    }
    const [v1Before] = defaultSerials(v1);
    const [v2Before] = defaultSerials(v2);
    assert.ok(v1Before && v2Before, "both agents serve a default certificate");

    const result = await runCli([
      "renew",
      "--identity",
      "bookstore/bookstore-v1",
      "--window",
      "1s",
      "--ca-dir",
      caDir,
    ]);
    assert.equal(result.code, 0, result.stderr);
    await server.waitForEvent("renew_order.received", 10_000);

    const changed = Date.now() + 15_000;
    while (defaultSerials(v1).length < 2 && Date.now() < changed) await sleep(50);
    const v1Serials = defaultSerials(v1);
    assert.equal(v1Serials.length, 2, "bookstore-v1's open stream got one new default");
    assert.notEqual(v1Serials[1], v1Before);
    assert.equal(v1.error, undefined, "on the same stream, without reconnecting");
    // The other identity of the same namespace: nothing, well past the window.
    await sleep(3_000);
    assert.deepEqual(defaultSerials(v2), [v2Before], "bookstore-v2 keeps its certificate");
    assert.equal(defaultSerials(v1).length, 2, "bookstore-v1 renewed once");
  } finally {
    for (const stop of stops) stop();
    for (const stream of streams) stream.end();
    await Promise.all(agents.map((a) => a.stop()));
    await server.stop();
  }
});

test("renew refuses unclear orders with exit code 2", async () => {
  const caDir = join(dir.path, "ca-flags");
  for (const args of [
    [],
    ["--all", "--namespace", "bookstore"],
    ["--identity", "bookstore"],
    ["--identity", "Bookstore/x"],
    ["--namespace", "not_a_namespace"],
    ["--all", "--window", "48h"],
  ]) {
    const result = await runCli(["renew", ...args, "--ca-dir", caDir]);
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
    assert.match(result.stderr, /renew: /);
  }
  const none = await runCli(["renew", "--all"], { KUBECONFIG: "", KUBERNETES_SERVICE_HOST: "" });
  assert.equal(none.code, 2);
  assert.match(none.stderr, /--ca-dir.*--kubeconfig/);
});

test("Kubernetes mode: the order lands in the ConfigMap and reaches every replica once", async () => {
  const fake = await FakeKubeApiServer.start({ namespaces: ["osm-system"] });
  const replicas: ReturnType<typeof followRenewOrders>[] = [];
  const clients: KubeClient[] = [];
  try {
    fake.addToken("admin-token", { username: "admin", groups: ["system:masters"] });
    const kubeconfig = join(dir.path, "kubeconfig.json");
    await writeFile(kubeconfig, fake.kubeconfig("admin-token"));
    const provider = { renewOrder: () => null } as unknown as CertificateProvider;
    const heard: string[][] = [[], []];
    for (const i of [0, 1]) {
      const client = new KubeClient({ config: await loadKubeconfig(kubeconfig) });
      clients.push(client);
      const { logger } = captureLog(`replica-${i}`);
      const replica = followRenewOrders({
        store: new ConfigMapRenewOrderStore({ client, namespace: "osm-system" }),
        provider,
        logger,
        metrics: new MetricsRegistry(),
        pollMs: 200,
      });
      replica.book.onNewOrders((orders) => heard[i]?.push(...orders.map((o) => o.id)));
      replicas.push(replica);
    }
    const run = await runCli([
      "renew",
      "--namespace",
      "bookstore",
      "--window",
      "30s",
      "--kubeconfig",
      kubeconfig,
      "--osm-namespace",
      "osm-system",
    ]);
    assert.equal(run.code, 0, run.stderr);
    const admin = new KubeClient({ config: await loadKubeconfig(kubeconfig) });
    clients.push(admin);
    const map = await admin.get(CONFIG_MAPS, RENEW_ORDERS_CONFIG_MAP, { namespace: "osm-system" });
    const [stored] = parseOrders(map.data?.[RENEW_ORDERS_KEY] ?? "");
    assert.deepEqual(stored?.scope, { kind: "namespace", namespace: "bookstore" });
    assert.equal(stored?.windowMs, 30_000);

    const deadline = Date.now() + 10_000;
    while (heard.some((ids) => ids.length === 0) && Date.now() < deadline) await sleep(50);
    // Several polls and the watch have read the same order since: still announced once per replica.
    await sleep(1_000);
    assert.deepEqual(heard, [[stored?.id], [stored?.id]]);
    for (const replica of replicas) {
      const order = replica.book.orderFor({ namespace: "bookstore", serviceAccount: "any" });
      assert.equal(order?.windowMs, 30_000);
      assert.equal(replica.book.orderFor({ namespace: "other", serviceAccount: "any" }), null);
    }

    // A second order is added to the list, not written over the first.
    const again = await runCli(["renew", "--all", "--kubeconfig", kubeconfig]);
    assert.equal(again.code, 0, again.stderr);
    const orders = await new ConfigMapRenewOrderStore({ client: admin, namespace: "osm-system" }).read();
    assert.deepEqual(
      orders.map((o) => o.scope.kind),
      ["namespace", "all"],
    );
  } finally {
    for (const replica of replicas) replica.stop();
    await Promise.all(clients.map((c) => c.close()));
    await fake.close();
  }
});
