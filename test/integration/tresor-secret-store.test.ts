// Tresor on Kubernetes: the root in the osm-ca-bundle Secret of a fake cluster, reached over real
// HTTPS. Replicas racing on an empty cluster agree on one root; a Secret that exists is never
// written, whether it is bad (start-up stops) or an operator's own CA (used as is).

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { test } from "node:test";
import { KubeApiError, KubeClient, StaticToken } from "../../server/kubernetes/client.js";
import { CaMaterialError, generateRoot } from "../../server/providers/tresor/ca-material.js";
import { SecretCaStore } from "../../server/providers/tresor/secret-store.js";
import { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";

const NS = "osm-system";
const NAME = "osm-ca-bundle";
const ROOT = { keyAlgorithm: "ecdsa-p256", commonName: "osm.root", validityMs: 87_600 * 3_600_000 } as const;

interface Cluster {
  readonly fake: FakeKubeApiServer;
  /** A fresh client per replica, as separate processes would have. */
  client(): KubeClient;
}

async function withCluster(run: (cluster: Cluster) => Promise<void>): Promise<void> {
  const fake = await FakeKubeApiServer.start({ namespaces: [NS] });
  const token = fake.serviceAccountToken(NS, "osm-cert");
  const clients: KubeClient[] = [];
  try {
    await run({
      fake,
      client: () => {
        const client = new KubeClient({
          config: {
            server: fake.url,
            caPem: fake.caPem,
            token: new StaticToken(token, "test"),
            namespace: NS,
            source: "test",
          },
          retry: { baseDelayMs: 10, maxDelayMs: 40 },
        });
        clients.push(client);
        return client;
      },
    });
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await fake.close();
  }
}

function secretText(secret: Record<string, unknown> | undefined, key: string): string {
  const data = (secret?.data ?? {}) as Record<string, string>;
  return Buffer.from(data[key] ?? "", "base64").toString("utf8");
}

function storedVersion(fake: FakeKubeApiServer): unknown {
  const metadata = fake.object("secrets", NS, NAME)?.metadata;
  return metadata !== null && typeof metadata === "object" && !Array.isArray(metadata)
    ? metadata.resourceVersion
    : undefined;
}

function seedSecret(fake: FakeKubeApiServer, data: Record<string, string>): string {
  const encoded = Object.fromEntries(
    Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString("base64")]),
  );
  const seeded = fake.seed("secrets", {
    metadata: { name: NAME, namespace: NS },
    type: "Opaque",
    data: encoded,
  });
  return String((seeded.metadata as Record<string, unknown>).resourceVersion);
}

test("five replicas starting together on an empty cluster end with one Secret and one root", async () => {
  await withCluster(async ({ fake, client }) => {
    const created: boolean[] = [];
    const replicas = await Promise.all(
      Array.from({ length: 5 }, () =>
        TresorProvider.open({
          store: new SecretCaStore({ client: client() }),
          root: ROOT,
          onRoot: (event) => created.push(event.created),
        }),
      ),
    );
    assert.equal(
      new Set(replicas.map((r) => r.trustBundle().version)).size,
      1,
      "all replicas sign with the same root",
    );
    assert.equal(fake.objectsOf("secrets", NS).length, 1);
    assert.equal(fake.count({ verb: "create", resource: "secrets", status: 201 }), 1);
    assert.equal(created.filter((c) => c).length, 1, "exactly one replica reports creating the root");

    const secret = fake.object("secrets", NS, NAME);
    assert.equal(secret?.type, "Opaque");
    assert.deepEqual(Object.keys((secret?.data ?? {}) as object).sort(), [
      "ca.crt",
      "expiration",
      "private.key",
    ]);
    assert.equal(secretText(secret, "ca.crt"), replicas[0]?.trustBundle().roots[0]);
    const expiration = secretText(secret, "expiration");
    assert.match(expiration, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(
      Date.parse(expiration),
      Date.parse(new X509Certificate(secretText(secret, "ca.crt")).validTo),
    );
    assert.match(secretText(secret, "private.key"), /^-----BEGIN PRIVATE KEY-----\n/);

    const restarted = await TresorProvider.open({
      store: new SecretCaStore({ client: client() }),
      root: ROOT,
    });
    assert.deepEqual(restarted.trustBundle(), replicas[0]?.trustBundle(), "a restart reuses the stored root");
  });
});

test("a Secret whose private.key does not match ca.crt stops start-up and is left untouched", async () => {
  await withCluster(async ({ fake, client }) => {
    const root = await generateRoot(ROOT);
    const rv = seedSecret(fake, {
      "ca.crt": root.caCert,
      "private.key": (await generateRoot(ROOT)).privateKey,
      expiration: root.expiration,
    });
    await assert.rejects(
      TresorProvider.open({ store: new SecretCaStore({ client: client() }), root: ROOT }),
      (e: unknown) =>
        e instanceof CaMaterialError &&
        e.message === "Secret osm-system/osm-ca-bundle: private.key does not match the public key in ca.crt",
    );
    assert.equal(storedVersion(fake), rv);
    assert.equal(
      fake.count({ verb: "create" }) + fake.count({ verb: "update" }) + fake.count({ verb: "patch" }),
      0,
    );
  });
});

test("a Secret missing keys names them and is never overwritten", async () => {
  await withCluster(async ({ fake, client }) => {
    const root = await generateRoot(ROOT);
    const rv = seedSecret(fake, { "ca.crt": root.caCert });
    await assert.rejects(
      TresorProvider.open({ store: new SecretCaStore({ client: client() }), root: ROOT }),
      (e: unknown) =>
        e instanceof CaMaterialError &&
        e.message.startsWith(
          "Secret osm-system/osm-ca-bundle: incomplete CA (missing private.key, expiration); refusing to overwrite it.",
        ),
    );
    assert.equal(storedVersion(fake), rv);
  });
});

test("a root the operator put in the Secret (bring your own CA) is used as is", async () => {
  await withCluster(async ({ fake, client }) => {
    const own = await generateRoot({
      ...ROOT,
      commonName: "corp.mesh.root",
      organization: "Example Corp",
      keyAlgorithm: "rsa-2048",
    });
    const rv = seedSecret(fake, {
      "ca.crt": own.caCert,
      "private.key": own.privateKey,
      expiration: own.expiration,
    });
    let created: boolean | undefined;
    const provider = await TresorProvider.open({
      store: new SecretCaStore({ client: client() }),
      root: ROOT,
      onRoot: (event) => {
        created = event.created;
      },
    });
    assert.equal(created, false);
    assert.equal(provider.trustBundle().roots[0], own.caCert);
    assert.equal(new X509Certificate(own.caCert).subject, "O=Example Corp\nCN=corp.mesh.root");
    assert.equal(storedVersion(fake), rv);
    assert.equal(fake.count({ verb: "create" }), 0);
  });
});

test("a custom Secret name and namespace are honoured", async () => {
  await withCluster(async ({ fake, client }) => {
    fake.seed("namespaces", { metadata: { name: "mesh" } });
    await TresorProvider.open({
      store: new SecretCaStore({ client: client(), namespace: "mesh", name: "root" }),
      root: ROOT,
    });
    assert.ok(fake.object("secrets", "mesh", "root"));
    assert.equal(fake.object("secrets", NS, NAME), undefined);
  });
});

test("a create whose response was lost is repeated, finds its own Secret, and counts as created", async () => {
  await withCluster(async ({ fake, client }) => {
    fake.disconnectNext(1, { match: { verb: "create", resource: "secrets" }, afterWrite: true });
    let created: boolean | undefined;
    const provider = await TresorProvider.open({
      store: new SecretCaStore({ client: client() }),
      root: ROOT,
      onRoot: (event) => {
        created = event.created;
      },
    });
    assert.equal(created, true);
    assert.equal(secretText(fake.object("secrets", NS, NAME), "ca.crt"), provider.trustBundle().roots[0]);
    assert.deepEqual(
      fake.requests.filter((r) => r.verb === "create").map((r) => r.status),
      [0, 409],
    );
  });
});

test("RBAC that forbids creating the Secret stops start-up with the verb and resource named", async () => {
  await withCluster(async ({ fake, client }) => {
    fake.deny({ verb: "create", resource: "secrets" });
    await assert.rejects(
      TresorProvider.open({ store: new SecretCaStore({ client: client() }), root: ROOT }),
      (e: unknown) =>
        e instanceof KubeApiError &&
        e.status === 403 &&
        e.message ===
          'forbidden: cannot create secrets in namespace osm-system (RBAC: grant "create" on "secrets")',
    );
    fake.clearFaults();
    fake.deny({ verb: "get", resource: "secrets" });
    await assert.rejects(
      TresorProvider.open({ store: new SecretCaStore({ client: client() }), root: ROOT }),
      /forbidden: cannot get secrets "osm-ca-bundle" in namespace osm-system \(RBAC: grant "get" on "secrets"\)/,
    );
  });
});
