// Trust-bundle distribution against the fake API server over real HTTPS: the ConfigMap appears in
// every selected namespace and nowhere else, follows new namespaces, edits, deletions and bundle
// changes, survives broken and expired watches without missing what happened meanwhile, says
// once and clearly what RBAC refuses, and is kept by whichever replica leads.

import assert from "node:assert/strict";
import { test } from "node:test";
import { MetricsRegistry } from "../../common/metrics.js";
import {
  CONFIG_MAPS,
  type ConfigMap,
  KubeClient,
  NAMESPACES,
  StaticToken,
} from "../../server/kubernetes/client.js";
import { LeaderElector } from "../../server/kubernetes/leader-election.js";
import {
  DEFAULT_TRUST_BUNDLE_CONFIGMAP_NAME as NAME,
  TrustBundleDistributor,
  type TrustBundleDistributorOptions,
} from "../../server/kubernetes/trust-bundle-distributor.js";
import type { CertificateProvider, TrustBundle } from "../../server/providers/provider.js";
import { generateRoot } from "../../server/providers/tresor/ca-material.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { type CapturedLog, captureLog } from "../helpers/log-capture.js";

const OSM_NS = "osm-system";
const MESH_LABEL = "openservicemesh.io/monitored-by";
const MANAGED = { "app.kubernetes.io/managed-by": "osm-cert" };
const ROOT = { keyAlgorithm: "ecdsa-p256", commonName: "osm.root", validityMs: 87_600 * 3_600_000 } as const;
const ROOT_1 = (await generateRoot(ROOT)).caCert;
const ROOT_2 = (await generateRoot(ROOT)).caCert;

/** The provider's trust-bundle face, with a rotation the test triggers. */
class TestProvider implements Pick<CertificateProvider, "trustBundle" | "onTrustBundleChange"> {
  private bundle: TrustBundle;
  private readonly listeners = new Set<(bundle: TrustBundle) => void>();
  constructor(roots: readonly string[]) {
    this.bundle = { roots, version: "1" };
  }
  trustBundle(): TrustBundle {
    return this.bundle;
  }
  onTrustBundleChange(listener: (bundle: TrustBundle) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  rotate(roots: readonly string[]): void {
    this.bundle = { roots, version: String(Number(this.bundle.version) + 1) };
    for (const listener of this.listeners) listener(this.bundle);
  }
  get subscribers(): number {
    return this.listeners.size;
  }
}

interface Cluster {
  readonly fake: FakeKubeApiServer;
  readonly provider: TestProvider;
  /** An operator with kubectl. */
  readonly admin: KubeClient;
  client(user: string): KubeClient;
  /** Started by `distribute`, stopped at the end. */
  readonly stops: (() => Promise<void>)[];
}

interface Running {
  readonly distributor: TrustBundleDistributor;
  readonly metrics: MetricsRegistry;
  readonly log: CapturedLog;
  readonly username: string;
  stop(): Promise<void>;
}

async function withCluster(
  namespaces: Record<string, Record<string, string>>,
  run: (cluster: Cluster) => Promise<void>,
): Promise<void> {
  const fake = await FakeKubeApiServer.start({ namespaces: [OSM_NS] });
  for (const [name, labels] of Object.entries(namespaces))
    fake.seed("namespaces", { metadata: { name, labels } });
  const clients: KubeClient[] = [];
  const client = (user: string) => {
    const made = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken(fake.serviceAccountToken(OSM_NS, user), "test"),
        namespace: OSM_NS,
        source: "test",
      },
      retry: { baseDelayMs: 10, maxDelayMs: 40 },
    });
    clients.push(made);
    return made;
  };
  const cluster: Cluster = {
    fake,
    provider: new TestProvider([ROOT_1]),
    admin: client("admin"),
    client,
    stops: [],
  };
  try {
    await run(cluster);
  } finally {
    await Promise.all(cluster.stops.map((stop) => stop()));
    await Promise.all(clients.map((c) => c.close()));
    await fake.close();
  }
}

function distributorFor(
  cluster: Cluster,
  user: string,
  options: Partial<TrustBundleDistributorOptions> = {},
): Omit<Running, "stop"> {
  const metrics = new MetricsRegistry();
  const log = captureLog(user);
  const distributor = new TrustBundleDistributor({
    client: cluster.client(user),
    provider: cluster.provider,
    logger: log.logger,
    metrics,
    retryBaseMs: 50,
    retryCapMs: 400,
    ...options,
  });
  return { distributor, metrics, log, username: FakeKubeApiServer.serviceAccountUser(OSM_NS, user).username };
}

/** A distributor running as if this replica led. */
function distribute(cluster: Cluster, options: Partial<TrustBundleDistributorOptions> = {}): Running {
  const parts = distributorFor(cluster, "osm-cert", options);
  const controller = new AbortController();
  const running = parts.distributor.run(controller.signal);
  const stop = () => {
    controller.abort();
    return running;
  };
  cluster.stops.push(stop);
  return { ...parts, stop };
}

async function eventually<T>(
  what: string,
  check: () => T | undefined | false | null | Promise<T | undefined | false | null>,
  timeoutMs = 5_000,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false && value !== null) return value;
    if (performance.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function configMapIn(fake: FakeKubeApiServer, namespace: string): ConfigMap | undefined {
  return fake.object("configmaps", namespace, NAME) as ConfigMap | undefined;
}

function holds(fake: FakeKubeApiServer, namespace: string, bundle: string): boolean {
  const configMap = configMapIn(fake, namespace);
  return (
    configMap !== undefined &&
    JSON.stringify(configMap.data) === JSON.stringify({ "ca.crt": bundle }) &&
    configMap.metadata?.labels?.["app.kubernetes.io/managed-by"] === "osm-cert"
  );
}

function allHold(fake: FakeKubeApiServer, namespaces: readonly string[], bundle: string): boolean {
  return namespaces.every((ns) => holds(fake, ns, bundle));
}

function metric(registry: MetricsRegistry, series: string): number {
  const line = registry
    .render()
    .split("\n")
    .find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

const GAUGE = "osm_cert_server_trust_bundle_configmaps";
const writes = (result: string) => `osm_cert_server_trust_bundle_writes_total{result="${result}"}`;

async function editConfigMap(admin: KubeClient, namespace: string, edit: (cm: ConfigMap) => ConfigMap) {
  const current = await admin.get(CONFIG_MAPS, NAME, { namespace });
  return admin.update(CONFIG_MAPS, edit(current));
}

const MESH = { [MESH_LABEL]: "osm" };

test("a ConfigMap in every selected namespace, with the bundle and our label, and none elsewhere", async () => {
  await withCluster({ bookstore: MESH, bookbuyer: MESH, unmeshed: {} }, async (cluster) => {
    const { fake } = cluster;
    // A ConfigMap of the same name, even with our label, in a namespace we do not select.
    const foreign = fake.seed("configmaps", {
      metadata: { name: NAME, namespace: "unmeshed", labels: MANAGED },
      data: { "ca.crt": "not ours to manage" },
    });
    const { metrics } = distribute(cluster);

    await eventually(
      "both meshed namespaces hold the bundle",
      () => allHold(fake, ["bookstore", "bookbuyer"], ROOT_1) && metric(metrics, GAUGE) === 2,
    );
    for (const namespace of ["default", "kube-system", "kube-public", "kube-node-lease", OSM_NS]) {
      assert.equal(configMapIn(fake, namespace), undefined, `nothing in ${namespace}`);
    }
    assert.deepEqual(
      configMapIn(fake, "unmeshed"),
      foreign,
      "the unselected namespace's ConfigMap is untouched",
    );
    assert.equal(fake.count({ namespace: "unmeshed" }), 0, "not even read");
    assert.equal(metric(metrics, writes("created")), 2);
    assert.equal(fake.count({ verb: "update", resource: "configmaps" }), 0);
    const created = configMapIn(fake, "bookstore");
    assert.deepEqual(created?.metadata?.labels, MANAGED);
  });
});

test("namespaces that appear or gain the label get the ConfigMap; those that lose it are left alone", async () => {
  await withCluster({ bookstore: MESH, unmeshed: {} }, async (cluster) => {
    const { fake, admin } = cluster;
    // Any selector works; this one names our mesh, so another mesh's namespaces are not ours.
    const { metrics } = distribute(cluster, { namespaceSelector: `${MESH_LABEL}=osm` });
    await eventually("bookstore", () => holds(fake, "bookstore", ROOT_1));

    await admin.create(NAMESPACES, { metadata: { name: "other-mesh", labels: { [MESH_LABEL]: "other" } } });
    await admin.create(NAMESPACES, { metadata: { name: "bookthief", labels: MESH } });
    await eventually("a new namespace gets it", () => holds(fake, "bookthief", ROOT_1));
    const setLabels = async (name: string, labels: Record<string, string>) => {
      const namespace = await admin.get(NAMESPACES, name);
      await admin.update(NAMESPACES, { ...namespace, metadata: { ...namespace.metadata, labels } });
    };
    await setLabels("unmeshed", MESH);
    await eventually("a namespace labelled later gets it", () => holds(fake, "unmeshed", ROOT_1));
    assert.equal(configMapIn(fake, "other-mesh"), undefined, "another mesh's namespace is not ours");
    await eventually("three counted", () => metric(metrics, GAUGE) === 3);

    // Once the label goes, the namespace is not ours any more: an edit there stays.
    await setLabels("unmeshed", {});
    await eventually("unmeshed no longer counted", () => metric(metrics, GAUGE) === 2);
    const edited = await editConfigMap(admin, "unmeshed", (cm) => ({ ...cm, data: { "ca.crt": "edited" } }));
    await admin.create(NAMESPACES, { metadata: { name: "sync-point", labels: MESH } });
    await eventually("a later namespace is served", () => holds(fake, "sync-point", ROOT_1));
    assert.deepEqual(configMapIn(fake, "unmeshed"), edited, "no longer selected, so not repaired");
  });
});

test("edited, relabelled and deleted ConfigMaps are repaired", async () => {
  await withCluster({ bookstore: MESH, bookbuyer: MESH }, async (cluster) => {
    const { fake, admin } = cluster;
    const { metrics, log } = distribute(cluster);
    await eventually("both", () => allHold(fake, ["bookstore", "bookbuyer"], ROOT_1));

    await editConfigMap(admin, "bookstore", (cm) => ({ ...cm, data: { "ca.crt": "tampered", extra: "x" } }));
    await eventually("the data is restored, extra keys gone", () => holds(fake, "bookstore", ROOT_1));

    // Without our label it leaves the watched selection (a DELETED event), yet it is still there.
    await editConfigMap(admin, "bookbuyer", (cm) => ({
      ...cm,
      metadata: { ...cm.metadata, labels: { team: "books" } },
      data: { "ca.crt": "tampered" },
    }));
    await eventually("relabelled and restored", () => holds(fake, "bookbuyer", ROOT_1));
    assert.equal(configMapIn(fake, "bookbuyer")?.metadata?.labels?.team, "books", "other labels are kept");

    const uid = configMapIn(fake, "bookstore")?.metadata?.uid;
    await admin.delete(CONFIG_MAPS, NAME, { namespace: "bookstore" });
    await eventually(
      "recreated",
      () =>
        holds(fake, "bookstore", ROOT_1) &&
        configMapIn(fake, "bookstore")?.metadata?.uid !== uid &&
        metric(metrics, GAUGE) === 2,
    );

    assert.equal(metric(metrics, writes("created")), 3);
    assert.equal(metric(metrics, writes("updated")), 2);
    assert.equal(metric(metrics, GAUGE), 2);
    assert.equal(
      log.lines.filter((l) => l.event === "trust_bundle.configmap_updated" && l.repaired).length,
      2,
    );
  });
});

test("a broken watch or a 410 Expired re-lists, so nothing that happened meanwhile is missed", async () => {
  await withCluster({ bookstore: MESH, bookbuyer: MESH }, async (cluster) => {
    const { fake, admin } = cluster;
    const { log, username } = distribute(cluster);
    await eventually("both", () => allHold(fake, ["bookstore", "bookbuyer"], ROOT_1));
    const lists = () => fake.count({ verb: "list", resource: "namespaces", status: 200 });
    const listedBefore = lists();

    // The watches break and stay down a while (lists refused too); meanwhile the cluster changes.
    const allow = fake.deny({ verb: ["list", "watch"], user: username });
    fake.dropWatches();
    fake.seed("namespaces", { metadata: { name: "late-one", labels: MESH } });
    await admin.delete(CONFIG_MAPS, NAME, { namespace: "bookstore" });
    await editConfigMap(admin, "bookbuyer", (cm) => ({ ...cm, data: { "ca.crt": "tampered" } }));
    await eventually("re-lists refused twice", () => fake.count({ verb: "list", status: 403 }) >= 4);
    allow();
    await eventually("everything caught up", () =>
      allHold(fake, ["bookstore", "bookbuyer", "late-one"], ROOT_1),
    );
    assert.ok(lists() > listedBefore, "namespaces were listed again");

    // A watch resumed from a version the server has since forgotten gets 410 Expired: list again.
    fake.latencyMs = 150;
    fake.endWatches(); // a clean end: the distributor resumes from its last versions…
    fake.seed("namespaces", { metadata: { name: "late-two", labels: MESH } });
    fake.compact(); // …which the server forgets (a change later) before the resumed watches arrive
    const expired = () =>
      log.lines.filter((l) => l.event === "trust_bundle.relist" && l.reason === "expired");
    await eventually("both watches expired and re-listed", () => expired().length === 2);
    fake.latencyMs = 0;
    await eventually("late-two", () => holds(fake, "late-two", ROOT_1));
    assert.deepEqual(
      expired()
        .map((l) => l.resource)
        .sort(),
      ["configmaps", "namespaces"],
    );
  });
});

test("a new trust bundle reaches every ConfigMap", async () => {
  const namespaces = { ns1: MESH, ns2: MESH, ns3: MESH };
  await withCluster(namespaces, async (cluster) => {
    const { fake, provider } = cluster;
    const { metrics, log, stop } = distribute(cluster);
    const all = Object.keys(namespaces);
    await eventually("first bundle", () => allHold(fake, all, ROOT_1) && metric(metrics, GAUGE) === 3);

    assert.ok(ROOT_1.endsWith("\n"));
    // Old and new root side by side, as during a rotation; a PEM without its last newline still
    // ends up on lines of its own.
    provider.rotate([ROOT_2, ROOT_1.trimEnd()]);
    const bundle = `${ROOT_2}${ROOT_1}`;
    await eventually(
      "every ConfigMap updated",
      () => allHold(fake, all, bundle) && metric(metrics, GAUGE) === 3,
    );
    assert.equal(metric(metrics, writes("updated")), 3);
    assert.equal(
      log.lines.filter((l) => l.event === "trust_bundle.changed").length,
      1,
      "one line per change",
    );
    assert.equal(log.lines.filter((l) => l.repaired).length, 0, "a rollout is not a repair");

    await stop();
    assert.equal(metric(metrics, GAUGE), 0, "a replica that stopped leading manages nothing");
    assert.equal(provider.subscribers, 0);
  });
});

test("a write from a stale copy gets Conflict, is re-read and retried, keeping others' changes", async () => {
  await withCluster({ bookstore: MESH, bookbuyer: MESH }, async (cluster) => {
    const { fake, admin, provider } = cluster;
    const { metrics, username } = distribute(cluster);
    await eventually("both", () => allHold(fake, ["bookstore", "bookbuyer"], ROOT_1));

    // Blind the distributor to ConfigMap changes so that its copy goes stale.
    const allow = fake.deny({ verb: ["list", "watch"], resource: "configmaps", user: username });
    fake.dropWatches();
    await eventually("blind", () => fake.count({ verb: "list", resource: "configmaps", status: 403 }) >= 1);
    await editConfigMap(admin, "bookstore", (cm) => ({
      ...cm,
      metadata: { ...cm.metadata, annotations: { note: "kept" } },
    }));

    provider.rotate([ROOT_2]);
    await eventually(
      "both updated",
      () => allHold(fake, ["bookstore", "bookbuyer"], ROOT_2) && metric(metrics, GAUGE) === 2,
    );
    assert.equal(fake.count({ verb: "update", namespace: "bookstore", status: 409 }), 1);
    assert.equal(fake.count({ verb: "update", namespace: "bookbuyer", status: 409 }), 0);
    assert.equal(configMapIn(fake, "bookstore")?.metadata?.annotations?.note, "kept");
    assert.equal(metric(metrics, writes("conflict")), 1);
    assert.equal(metric(metrics, writes("updated")), 2);
    allow();
  });
});

test("RBAC refusing create on configmaps: one clear line naming verb and resource, then success once granted", async () => {
  const namespaces = { ns1: MESH, ns2: MESH, ns3: MESH };
  await withCluster(namespaces, async (cluster) => {
    const { fake } = cluster;
    const allow = fake.deny({ verb: "create", resource: "configmaps" });
    const { log, metrics } = distribute(cluster);
    await eventually(
      "every namespace refused a few times",
      () => fake.count({ verb: "create", resource: "configmaps", status: 403 }) >= 9,
    );
    const loud = () => log.lines.filter((l) => Number(l.level) >= 40);
    assert.equal(loud().length, 1, JSON.stringify(loud()));
    const [line] = loud();
    assert.equal(line?.level, 50);
    assert.equal(line?.verb, "create");
    assert.equal(line?.resource, "configmaps");
    assert.match(String(line?.msg), /cannot create configmaps .*grant "create" on "configmaps"/);

    allow();
    await eventually(
      "created once allowed",
      () => allHold(fake, Object.keys(namespaces), ROOT_1) && metric(metrics, GAUGE) === 3,
    );
    assert.equal(loud().length, 1, "nothing more to say once it works");
    assert.ok(metric(metrics, writes("forbidden")) >= 9);
    assert.equal(metric(metrics, writes("created")), 3);
  });
});

test("only the leader distributes; when it dies, the next leader repairs what changed while nobody led", async () => {
  await withCluster({ bookstore: MESH, bookbuyer: MESH }, async (cluster) => {
    const { fake, admin } = cluster;
    const replica = (name: string, releaseOnCancel: boolean) => {
      const parts = distributorFor(cluster, name);
      const controller = new AbortController();
      const elector = new LeaderElector({
        client: cluster.client(name),
        namespace: OSM_NS,
        identity: name,
        logger: parts.log.logger,
        metrics: parts.metrics,
        leaseDurationSeconds: 1,
        renewDeadlineMs: 700,
        retryPeriodMs: 200,
        releaseOnCancel,
        onStartedLeading: (signal) => parts.distributor.run(signal),
      });
      const running = elector.run(controller.signal);
      const stop = () => {
        controller.abort();
        return running;
      };
      cluster.stops.push(stop);
      return { ...parts, elector, stop };
    };

    const a = replica("replica-a", false);
    await eventually("a leads and distributes", () => a.elector.isLeader && metric(a.metrics, GAUGE) === 2);
    const b = replica("replica-b", true);
    await eventually("b follows a", () => b.elector.leader === "replica-a");
    assert.equal(fake.count({ resource: "configmaps", user: b.username }), 0, "a follower does nothing");

    await a.stop(); // dies: its work stops, the Lease is not released
    const requestsAtDeath = fake.requests.length;
    assert.equal(metric(a.metrics, GAUGE), 0);
    await editConfigMap(admin, "bookstore", (cm) => ({ ...cm, data: { "ca.crt": "tampered" } }));
    await admin.delete(CONFIG_MAPS, NAME, { namespace: "bookbuyer" });
    await admin.create(NAMESPACES, { metadata: { name: "bookthief", labels: MESH } });
    assert.equal(b.elector.isLeader, false, "nobody leads until the dead leader's lease expires");

    await eventually(
      "b leads and repairs",
      () =>
        b.elector.isLeader &&
        allHold(fake, ["bookstore", "bookbuyer", "bookthief"], ROOT_1) &&
        metric(b.metrics, GAUGE) === 3,
    );
    assert.equal(metric(b.metrics, writes("updated")), 1);
    assert.equal(metric(b.metrics, writes("created")), 2);
    const late = fake.requests.slice(requestsAtDeath).filter((r) => r.user === a.username);
    assert.deepEqual(late, [], "the dead leader sent nothing after it stopped");
  });
});
