// The Kubernetes client against the fake API server, over real HTTPS: typed errors, retries that
// never repeat a write which may have landed, watch semantics, and credentials that rotate.

import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { request } from "node:https";
import { join } from "node:path";
import { test } from "node:test";
import {
  CONFIG_MAPS,
  type ConfigMap,
  inClusterConfig,
  isAlreadyExists,
  isConflict,
  isForbidden,
  isGone,
  isNotFound,
  type KubeApiError,
  KubeClient,
  type KubeClientOptions,
  KubeConfigError,
  KubeConnectionError,
  LEASES,
  loadKubeconfig,
  NAMESPACES,
  SECRETS,
  StaticToken,
  TOKEN_REVIEWS,
  type WatchEvent,
} from "../../server/kubernetes/client.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { tempDir } from "../helpers/pki.js";

const NS = "osm-system";
const FAST_RETRY = { baseDelayMs: 10, maxDelayMs: 40 };

interface Cluster {
  readonly fake: FakeKubeApiServer;
  readonly client: KubeClient;
}

async function withCluster(
  run: (cluster: Cluster) => Promise<void>,
  clientOptions: Partial<KubeClientOptions> = {},
): Promise<void> {
  const fake = await FakeKubeApiServer.start({ namespaces: [NS] });
  const token = fake.serviceAccountToken(NS, "osm-cert");
  const client = new KubeClient({
    config: {
      server: fake.url,
      caPem: fake.caPem,
      token: new StaticToken(token, "test"),
      namespace: NS,
      source: "test",
    },
    retry: FAST_RETRY,
    ...clientOptions,
  });
  try {
    await run({ fake, client });
  } finally {
    await client.close();
    await fake.close();
  }
}

function configMap(
  name: string,
  data: Record<string, string> = {},
  labels?: Record<string, string>,
): ConfigMap {
  return { metadata: { name, namespace: NS, ...(labels ? { labels } : {}) }, data };
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected a rejection");
}

test("get, create, update, patch, list and delete round-trip, each write a new resourceVersion", async () => {
  await withCluster(async ({ fake, client }) => {
    const created = await client.create(CONFIG_MAPS, configMap("osm-ca-root-cert", { "ca.crt": "one" }));
    assert.equal(created.kind, "ConfigMap");
    assert.equal(created.metadata?.namespace, NS);
    assert.match(created.metadata?.uid ?? "", /^[0-9a-f-]{36}$/);
    const rv1 = Number(created.metadata?.resourceVersion);

    const read = await client.get(CONFIG_MAPS, "osm-ca-root-cert", { namespace: NS });
    assert.deepEqual(read, created);

    const updated = await client.update(CONFIG_MAPS, { ...read, data: { "ca.crt": "two" } });
    const rv2 = Number(updated.metadata?.resourceVersion);
    assert.ok(rv2 > rv1, "update bumps the version");
    assert.equal(updated.metadata?.uid, created.metadata?.uid);

    const patched = await client.patch(
      CONFIG_MAPS,
      "osm-ca-root-cert",
      { metadata: { labels: { a: "b" } } },
      { namespace: NS },
    );
    assert.ok(Number(patched.metadata?.resourceVersion) > rv2);
    assert.deepEqual(patched.data, { "ca.crt": "two" }, "a merge patch keeps what it does not name");
    assert.deepEqual(patched.metadata?.labels, { a: "b" });

    const list = await client.list(CONFIG_MAPS, { namespace: NS });
    assert.equal(list.kind, "ConfigMapList");
    assert.equal(list.items.length, 1);
    assert.equal(list.metadata.resourceVersion, fake.resourceVersion);

    await client.delete(CONFIG_MAPS, "osm-ca-root-cert", { namespace: NS });
    assert.equal(fake.object("configmaps", NS, "osm-ca-root-cert"), undefined);

    const namespaces = await client.list(NAMESPACES, {
      labelSelector: "kubernetes.io/metadata.name in (osm-system,default)",
    });
    assert.deepEqual(
      namespaces.items.map((n) => n.metadata?.name),
      ["default", "osm-system"],
    );
    assert.deepEqual(fake.requests.map((r) => `${r.method} ${r.path.split("?")[0]}`).slice(0, 3), [
      "POST /api/v1/namespaces/osm-system/configmaps",
      "GET /api/v1/namespaces/osm-system/configmaps/osm-ca-root-cert",
      "PUT /api/v1/namespaces/osm-system/configmaps/osm-ca-root-cert",
    ]);
  });
});

test("404, 409 AlreadyExists and 409 Conflict arrive as typed errors with the API's message", async () => {
  await withCluster(async ({ client }) => {
    const missing = (await rejection(
      client.get(SECRETS, "osm-ca-bundle", { namespace: NS }),
    )) as KubeApiError;
    assert.ok(isNotFound(missing));
    assert.equal(missing.code, "ERR_OSM_CERT_KUBE_API");
    assert.equal(missing.reason, "NotFound");
    assert.equal(missing.message, 'secrets "osm-ca-bundle" not found');
    assert.deepEqual(missing.details, { name: "osm-ca-bundle", kind: "secrets" });

    const first = await client.create(CONFIG_MAPS, configMap("x"));
    const duplicate = (await rejection(client.create(CONFIG_MAPS, configMap("x")))) as KubeApiError;
    assert.ok(isAlreadyExists(duplicate));
    assert.equal(duplicate.status, 409);
    assert.equal(duplicate.message, 'configmaps "x" already exists');

    await client.update(CONFIG_MAPS, { ...first, data: { k: "fresh" } });
    const stale = (await rejection(
      client.update(CONFIG_MAPS, { ...first, data: { k: "stale" } }),
    )) as KubeApiError;
    assert.ok(isConflict(stale));
    assert.equal(stale.status, 409);
    assert.match(
      stale.message,
      /^Operation cannot be fulfilled on configmaps "x": the object has been modified/,
    );

    const lease = (await rejection(client.get(LEASES, "osm-cert-leader", { namespace: NS }))) as KubeApiError;
    assert.equal(lease.message, 'leases.coordination.k8s.io "osm-cert-leader" not found');
    assert.deepEqual(lease.details, {
      name: "osm-cert-leader",
      group: "coordination.k8s.io",
      kind: "leases",
    });

    const noNamespace = (await rejection(
      client.create(SECRETS, { metadata: { name: "s" } }, { namespace: "not-there" }),
    )) as KubeApiError;
    assert.equal(noNamespace.message, 'namespaces "not-there" not found');
  });
});

test("RBAC denial is a 403 naming the verb and resource, and is never retried", async () => {
  await withCluster(async ({ fake, client }) => {
    fake.deny({ verb: "create", resource: "secrets", namespace: NS });
    const denied = (await rejection(
      client.create(
        SECRETS,
        { metadata: { name: "osm-ca-bundle" }, data: {} },
        { namespace: NS, idempotent: true },
      ),
    )) as KubeApiError;
    assert.ok(isForbidden(denied));
    assert.equal(denied.reason, "Forbidden");
    assert.equal(
      denied.message,
      'forbidden: cannot create secrets in namespace osm-system (RBAC: grant "create" on "secrets")',
    );
    assert.equal(
      denied.statusMessage,
      'secrets is forbidden: User "system:serviceaccount:osm-system:osm-cert" cannot create resource "secrets" in API group "" in the namespace "osm-system"',
    );
    assert.equal(fake.count({ verb: "create" }), 1, "403 is not retried");

    fake.deny({ verb: "update", resource: "leases" });
    const lease = await client.create(
      LEASES,
      { metadata: { name: "osm-cert" }, spec: { holderIdentity: "a" } },
      { namespace: NS },
    );
    const leaseDenied = (await rejection(client.update(LEASES, lease))) as KubeApiError;
    assert.equal(
      leaseDenied.message,
      'forbidden: cannot update leases "osm-cert" in namespace osm-system (RBAC: grant "update" on "leases" in API group "coordination.k8s.io")',
    );
    assert.match(
      leaseDenied.statusMessage,
      /^leases\.coordination\.k8s\.io "osm-cert" is forbidden: User .* in API group "coordination\.k8s\.io"/,
    );

    fake.deny({ verb: "list", resource: "namespaces" });
    const clusterScope = (await rejection(client.list(NAMESPACES))) as KubeApiError;
    assert.equal(
      clusterScope.message,
      'forbidden: cannot list namespaces at cluster scope (RBAC: grant "list" on "namespaces")',
    );
  });
});

test("a rejected token is 401 naming the credential; the token source is re-read once, not hammered", async () => {
  await withCluster(async ({ fake }) => {
    const client = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken("wrong", "kubeconfig x"),
        namespace: NS,
        source: "test",
      },
      retry: FAST_RETRY,
    });
    try {
      const error = (await rejection(client.get(SECRETS, "a", { namespace: NS }))) as KubeApiError;
      assert.equal(error.status, 401);
      assert.equal(error.reason, "Unauthorized");
      assert.equal(error.statusMessage, "Unauthorized");
      assert.match(
        error.message,
        /^unauthorized: the API server at https:\/\/127\.0\.0\.1:\d+ rejected our credentials \(bearer token from kubeconfig x/,
      );
      assert.equal(fake.count({ status: 401 }), 1, "an unchanged token is not sent again");
    } finally {
      await client.close();
    }
  });
});

test("5xx and dropped connections are retried for reads until success; giving up is bounded", async () => {
  await withCluster(async ({ fake, client }) => {
    await client.create(CONFIG_MAPS, configMap("x"));
    fake.failNext(2, { status: 503, match: { verb: "get" } });
    await client.get(CONFIG_MAPS, "x", { namespace: NS });
    assert.equal(fake.count({ verb: "get", status: 503 }), 2);
    assert.equal(fake.count({ verb: "get", status: 200 }), 1);

    fake.disconnectNext(2, { match: { verb: "list" } });
    const list = await client.list(CONFIG_MAPS, { namespace: NS });
    assert.equal(list.items.length, 1);
    assert.equal(fake.count({ verb: "list", status: 0 }), 2);

    // A delete whose response was lost is repeated, and the NotFound it then meets means done.
    fake.disconnectNext(1, { match: { verb: "delete" }, afterWrite: true });
    await client.delete(CONFIG_MAPS, "x", { namespace: NS });
    assert.deepEqual(
      fake.requests.filter((r) => r.verb === "delete").map((r) => r.status),
      [0, 404],
    );
    const gone = (await rejection(client.delete(CONFIG_MAPS, "x", { namespace: NS }))) as KubeApiError;
    assert.ok(isNotFound(gone), "a plain delete of a missing object is still NotFound");
    await client.create(CONFIG_MAPS, configMap("x"));

    fake.failNext(100, { status: 500, match: { verb: "get" } });
    const error = (await rejection(client.get(CONFIG_MAPS, "x", { namespace: NS }))) as KubeApiError;
    assert.equal(error.status, 500);
    assert.equal(error.reason, "InternalError");
    // Which request, which server, and the API's own words: enough for a start-up line or a log.
    assert.match(
      error.message,
      new RegExp(
        `^get configmaps "x" in namespace ${NS}: the API server at ${fake.url} answered 500 InternalError: .+`,
      ),
    );
    assert.equal(error.statusMessage.includes("the API server at"), false, "statusMessage stays the API's");
    assert.equal(fake.count({ verb: "get", status: 500 }), 5, "the default policy makes 5 attempts");
  });
});

test("429 honours Retry-After, even for a create (throttled requests were never acted on)", async () => {
  await withCluster(async ({ fake, client }) => {
    fake.failNext(1, { status: 429, retryAfterSeconds: 1, match: { verb: "create" } });
    const started = performance.now();
    await client.create(CONFIG_MAPS, configMap("throttled"));
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= 950, `waited ${Math.round(elapsed)} ms for Retry-After: 1`);
    assert.equal(fake.count({ verb: "create", status: 429 }), 1);
    assert.equal(fake.count({ verb: "create", status: 201 }), 1);
  });
});

test("an API server that answers nothing: each attempt times out, the give-up is bounded; once it heals, answers come", async () => {
  await withCluster(
    async ({ fake, client }) => {
      await client.create(CONFIG_MAPS, configMap("held"));
      fake.holdRequests();
      const started = performance.now();
      const error = await rejection(client.get(CONFIG_MAPS, "held", { namespace: NS }));
      const elapsed = performance.now() - started;
      assert.ok(error instanceof KubeConnectionError, String(error));
      // Two attempts of 300 ms each and one short backoff: well under the seconds a hang would take.
      assert.ok(elapsed >= 550 && elapsed < 5_000, `gave up after ${Math.round(elapsed)} ms`);
      const waiting = client.get(CONFIG_MAPS, "held", { namespace: NS });
      await new Promise((resolve) => setTimeout(resolve, 100));
      fake.clearFaults();
      assert.equal((await waiting).metadata?.name, "held", "a request held over the heal is answered");
    },
    { requestTimeoutMs: 300, retry: { ...FAST_RETRY, maxAttempts: 2 } },
  );
});

test("a create that may have landed is not repeated: 500 and a lost response surface at once", async () => {
  await withCluster(async ({ fake, client }) => {
    fake.failNext(1, { status: 500, match: { verb: "create" } });
    const failed = (await rejection(client.create(CONFIG_MAPS, configMap("a")))) as KubeApiError;
    assert.equal(failed.status, 500);
    assert.equal(fake.count({ verb: "create" }), 1);

    fake.disconnectNext(1, { match: { verb: "create" }, afterWrite: true });
    const lost = await rejection(client.create(CONFIG_MAPS, configMap("b")));
    assert.ok(lost instanceof KubeConnectionError, String(lost));
    assert.equal(lost.code, "ERR_OSM_CERT_KUBE_CONNECTION");
    assert.equal(lost.notSent, false);
    assert.equal(fake.count({ verb: "create" }), 2);
    assert.ok(fake.object("configmaps", NS, "b"), "the write did land");

    // The caller who treats AlreadyExists as success may ask for retries anyway.
    fake.disconnectNext(1, { match: { verb: "create" }, afterWrite: true });
    const again = (await rejection(
      client.create(CONFIG_MAPS, configMap("c"), { idempotent: true }),
    )) as KubeApiError;
    assert.ok(isAlreadyExists(again), "the retry found its own earlier write");
  });
});

test("connection refused proves a request unsent: reads and creates ride out an API server restart", async () => {
  await withCluster(
    async ({ fake, client }) => {
      const restarted = fake.restart(250);
      const [read, created] = await Promise.all([
        client.list(NAMESPACES),
        client.create(CONFIG_MAPS, configMap("after-restart")),
      ]);
      await restarted;
      assert.ok(read.items.length >= 5);
      assert.equal(created.metadata?.name, "after-restart");
      assert.equal(fake.count({ verb: "create" }), 1, "exactly one create reached the server");
    },
    { retry: { maxAttempts: 10, baseDelayMs: 25, maxDelayMs: 100 } },
  );
});

test("an API server whose certificate does not chain to the configured CA is refused without retries", async () => {
  await withCluster(async ({ fake }) => {
    const other = await FakeKubeApiServer.start();
    const client = new KubeClient({
      config: {
        server: fake.url,
        caPem: other.caPem,
        token: new StaticToken("t", "test"),
        namespace: NS,
        source: "kubeconfig k",
      },
      retry: FAST_RETRY,
    });
    try {
      const error = await rejection(client.get(SECRETS, "a", { namespace: NS }));
      assert.ok(error instanceof KubeConnectionError);
      assert.match(error.message, /does not verify against the CA from kubeconfig k/);
      assert.equal(fake.requests.length, 0);
    } finally {
      await client.close();
      await other.close();
    }
  });
});

test("watch delivers ADDED, MODIFIED, DELETED and BOOKMARK from a list's resourceVersion", async () => {
  await withCluster(async ({ fake, client }) => {
    const list = await client.list(CONFIG_MAPS, { namespace: NS });
    const controller = new AbortController();
    const events: WatchEvent<ConfigMap>[] = [];
    const watching = (async () => {
      for await (const event of client.watch(CONFIG_MAPS, {
        namespace: NS,
        resourceVersion: list.metadata.resourceVersion,
        signal: controller.signal,
      })) {
        events.push(event);
        if (event.type === "DELETED") fake.sendBookmarks();
        if (event.type === "BOOKMARK") controller.abort();
      }
    })();
    const created = await client.create(CONFIG_MAPS, configMap("w", { v: "1" }));
    await client.update(CONFIG_MAPS, { ...created, data: { v: "2" } });
    await client.delete(CONFIG_MAPS, "w", { namespace: NS });
    await watching;
    assert.deepEqual(
      events.map((e) => e.type),
      ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"],
    );
    const [added, modified, deleted, bookmark] = events;
    assert.equal(added?.object.metadata?.name, "w");
    assert.deepEqual((modified?.object as ConfigMap | undefined)?.data, { v: "2" });
    assert.ok(
      Number(deleted?.object.metadata?.resourceVersion) > Number(modified?.object.metadata?.resourceVersion),
    );
    assert.equal(bookmark?.object.metadata?.resourceVersion, fake.resourceVersion);
    const watchRequest = fake.requests.find((r) => r.verb === "watch");
    assert.match(
      watchRequest?.path ?? "",
      /watch=1&allowWatchBookmarks=true&timeoutSeconds=\d+&resourceVersion=\d+/,
    );
  });
});

test("a label-selected watch without a version starts from current state and sees objects enter and leave", async () => {
  await withCluster(async ({ client }) => {
    const existing = await client.create(CONFIG_MAPS, configMap("a", {}, { mesh: "osm" }));
    await client.create(CONFIG_MAPS, configMap("b", {}, { mesh: "other" }));
    const controller = new AbortController();
    const seen: string[] = [];
    const watching = (async () => {
      for await (const event of client.watch(CONFIG_MAPS, {
        namespace: NS,
        labelSelector: "mesh=osm",
        signal: controller.signal,
      })) {
        seen.push(`${event.type} ${event.object.metadata?.name}`);
        if (seen.length === 3) controller.abort();
      }
    })();
    await client.patch(CONFIG_MAPS, "b", { metadata: { labels: { mesh: "osm" } } }, { namespace: NS });
    await client.update(CONFIG_MAPS, {
      ...existing,
      metadata: { ...existing.metadata, labels: { mesh: "gone" } },
    });
    await watching;
    assert.deepEqual(seen, ["ADDED a", "ADDED b", "DELETED a"]);
  });
});

test("a resourceVersion older than the server keeps is 410 Expired, so the caller re-lists and resumes", async () => {
  await withCluster(async ({ fake, client }) => {
    const cm = await client.create(CONFIG_MAPS, configMap("x"));
    const old = cm.metadata?.resourceVersion;
    await client.update(CONFIG_MAPS, { ...cm, data: { k: "v" } });
    fake.compact();
    const error = await rejection(
      (async () => {
        for await (const _ of client.watch(CONFIG_MAPS, { namespace: NS, resourceVersion: old })) {
          assert.fail("no event before the error");
        }
      })(),
    );
    assert.ok(isGone(error), String(error));
    assert.equal(error.status, 410);
    assert.equal(error.reason, "Expired");
    assert.match(error.message, /^too old resource version: \d+ \(\d+\)$/);

    const relisted = await client.list(CONFIG_MAPS, { namespace: NS });
    const controller = new AbortController();
    const resumed: string[] = [];
    const watching = (async () => {
      for await (const event of client.watch(CONFIG_MAPS, {
        namespace: NS,
        resourceVersion: relisted.metadata.resourceVersion,
        signal: controller.signal,
      })) {
        resumed.push(`${event.type} ${event.object.metadata?.name}`);
        controller.abort();
      }
    })();
    await client.create(CONFIG_MAPS, configMap("y"));
    await watching;
    assert.deepEqual(resumed, ["ADDED y"]);
  });
});

test("a watch broken mid-stream throws KubeConnectionError; one the server ends cleanly just finishes", async () => {
  await withCluster(async ({ fake, client }) => {
    let ended = false;
    const iterate = async (): Promise<number> => {
      let count = 0;
      for await (const _ of client.watch(NAMESPACES, {})) {
        count++;
        if (count === 5 && ended) fake.endWatches();
        else if (count === 5) fake.dropWatches();
      }
      return count;
    };
    const broken = await rejection(iterate());
    assert.ok(broken instanceof KubeConnectionError, String(broken));
    assert.match(broken.message, /watch of namespaces broke off/);
    ended = true;
    assert.equal(await iterate(), 5);
  });
});

test("list follows continue tokens through one consistent snapshot", async () => {
  await withCluster(async ({ fake, client }) => {
    for (const name of ["a", "b", "c", "d", "e"]) await client.create(CONFIG_MAPS, configMap(name));
    const list = await client.list(CONFIG_MAPS, { namespace: NS, limit: 2 });
    assert.deepEqual(
      list.items.map((i) => i.metadata?.name),
      ["a", "b", "c", "d", "e"],
    );
    assert.equal(list.metadata.continue, undefined);
    assert.equal(fake.count({ verb: "list" }), 3);
  });
});

test("TokenReview: the audience decides, and the pod is named in the user's extra fields", async () => {
  await withCluster(async ({ fake, client }) => {
    const pod = { name: "bookstore-v2-7d9f", uid: "4b6f3c1e-0000-4000-8000-000000000001" };
    const agentToken = fake.serviceAccountToken("bookstore", "bookstore-v2", {
      audiences: ["osm-cert"],
      pod,
    });
    const review = await client.create(TOKEN_REVIEWS, {
      spec: { token: agentToken, audiences: ["osm-cert"] },
    });
    assert.equal(review.status?.authenticated, true);
    assert.equal(review.status?.user?.username, "system:serviceaccount:bookstore:bookstore-v2");
    assert.deepEqual(review.status?.user?.extra?.["authentication.kubernetes.io/pod-name"], [pod.name]);
    assert.deepEqual(review.status?.user?.extra?.["authentication.kubernetes.io/pod-uid"], [pod.uid]);
    assert.deepEqual(review.status?.audiences, ["osm-cert"]);

    const wrongAudience = await client.create(TOKEN_REVIEWS, {
      spec: { token: agentToken, audiences: ["vault"] },
    });
    assert.equal(wrongAudience.status?.authenticated, undefined);
    assert.match(
      wrongAudience.status?.error ?? "",
      /token audiences \["osm-cert"\] is invalid for the target audiences \["vault"\]/,
    );

    // A token minted for osm-cert is no key to the API itself.
    const misuse = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken(agentToken, "test"),
        namespace: NS,
        source: "test",
      },
    });
    try {
      const error = (await rejection(misuse.get(SECRETS, "a", { namespace: NS }))) as KubeApiError;
      assert.equal(error.status, 401);
    } finally {
      await misuse.close();
    }
  });
});

test("in-cluster config re-reads a rotated token: periodically, and at once after a 401", async () => {
  const fake = await FakeKubeApiServer.start({ namespaces: [NS] });
  const dir = await tempDir();
  try {
    const first = fake.serviceAccountToken(NS, "osm-cert");
    await writeFile(join(dir.path, "token"), first);
    await writeFile(join(dir.path, "ca.crt"), fake.caPem);
    await writeFile(join(dir.path, "namespace"), NS);
    const env = { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: new URL(fake.url).port };

    const periodic = await inClusterConfig({ env, serviceAccountDir: dir.path, tokenRefreshMs: 100 });
    assert.equal(periodic.namespace, NS);
    assert.equal(periodic.server, fake.url);
    const client = new KubeClient({ config: periodic, retry: FAST_RETRY });
    const onRotation = await inClusterConfig({ env, serviceAccountDir: dir.path, tokenRefreshMs: 3_600_000 });
    const rotationClient = new KubeClient({ config: onRotation, retry: FAST_RETRY });
    try {
      await client.list(NAMESPACES);
      await rotationClient.list(NAMESPACES);

      // The kubelet writes a new token; the old one stays valid for a while.
      const second = fake.serviceAccountToken(NS, "osm-cert");
      await writeFile(join(dir.path, "token"), second);
      await new Promise((resolve) => setTimeout(resolve, 150));
      assert.equal(await periodic.token?.current(), second, "re-read after the refresh period");

      // Now the old token is revoked: the long-cache client learns of the rotation from the 401.
      fake.revokeToken(first);
      const before = fake.requests.length;
      await rotationClient.list(NAMESPACES);
      assert.deepEqual(
        fake.requests.slice(before).map((r) => r.status),
        [401, 200],
      );
    } finally {
      await client.close();
      await rotationClient.close();
    }

    await assert.rejects(
      inClusterConfig({ env: {}, serviceAccountDir: dir.path }),
      (e: unknown) => e instanceof KubeConfigError && /KUBERNETES_SERVICE_HOST.*--kubeconfig/.test(e.message),
    );
  } finally {
    await dir.remove();
    await fake.close();
  }
});

test("kubeconfig: YAML as kubectl writes it and JSON; CA data with a token, or client certificate files", async () => {
  const fake = await FakeKubeApiServer.start({ namespaces: [NS] });
  const dir = await tempDir();
  try {
    const token = fake.serviceAccountToken(NS, "osm-cert");
    const admin = await fake.issueClientCertificate("kubernetes-admin", "system:masters");
    await writeFile(join(dir.path, "admin.crt"), admin.certPem);
    await writeFile(join(dir.path, "admin.key"), admin.keyPem);
    const kubeconfig = {
      apiVersion: "v1",
      kind: "Config",
      "current-context": "token",
      clusters: [
        {
          name: "fake",
          cluster: {
            server: fake.url,
            "certificate-authority-data": Buffer.from(fake.caPem).toString("base64"),
          },
        },
      ],
      users: [
        { name: "sa", user: { token } },
        { name: "admin", user: { "client-certificate": "admin.crt", "client-key": "admin.key" } },
      ],
      contexts: [
        { name: "token", context: { cluster: "fake", user: "sa", namespace: NS } },
        { name: "cert", context: { cluster: "fake", user: "admin" } },
      ],
    };
    const path = join(dir.path, "config.json");
    await writeFile(path, JSON.stringify(kubeconfig));

    const viaToken = await loadKubeconfig(path);
    assert.equal(viaToken.namespace, NS);
    const viaCert = await loadKubeconfig(path, { context: "cert" });
    assert.equal(viaCert.namespace, "default");
    for (const config of [viaToken, viaCert]) {
      const client = new KubeClient({ config });
      try {
        await client.get(NAMESPACES, NS);
      } finally {
        await client.close();
      }
    }
    assert.deepEqual(
      fake.requests.map((r) => r.user),
      ["system:serviceaccount:osm-system:osm-cert", "kubernetes-admin"],
    );

    // The YAML kubectl writes: same content, block style.
    const yamlPath = join(dir.path, "config");
    await writeFile(
      yamlPath,
      [
        "apiVersion: v1",
        "kind: Config",
        "current-context: token",
        "clusters:",
        "- name: fake",
        "  cluster:",
        `    server: ${fake.url}`,
        `    certificate-authority-data: ${Buffer.from(fake.caPem).toString("base64")}`,
        "users:",
        "- name: sa",
        "  user:",
        `    token: ${token}`,
        "contexts:",
        "- name: token",
        "  context:",
        "    cluster: fake",
        "    user: sa",
        `    namespace: ${NS}`,
        "",
      ].join("\n"),
    );
    const viaYaml = await loadKubeconfig(yamlPath);
    assert.equal(viaYaml.server, fake.url);
    assert.equal(viaYaml.namespace, NS);
    await writeFile(yamlPath, "clusters: [unclosed\n");
    await assert.rejects(
      loadKubeconfig(yamlPath),
      (e: unknown) => e instanceof KubeConfigError && /neither valid YAML nor JSON/.test(e.message),
    );
    await writeFile(path, JSON.stringify({ ...kubeconfig, "current-context": "nope" }));
    await assert.rejects(loadKubeconfig(path), /no context named "nope"/);
  } finally {
    await dir.remove();
    await fake.close();
  }
});

test("the fake refuses malformed bodies, kind mismatches and invalid names as the API server does", async () => {
  await withCluster(async ({ fake }) => {
    const token = fake.serviceAccountToken(NS, "osm-cert");
    const post = (path: string, body: string): Promise<{ status: number; json: Record<string, unknown> }> =>
      new Promise((resolve, reject) => {
        const req = request(
          `${fake.url}${path}`,
          {
            method: "POST",
            ca: fake.caPem,
            headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          },
          (res) => {
            let text = "";
            res.setEncoding("utf8").on("data", (chunk: string) => {
              text += chunk;
            });
            res.on("end", () =>
              resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as Record<string, unknown> }),
            );
          },
        );
        req.on("error", reject);
        req.end(body);
      });
    const secrets = `/api/v1/namespaces/${NS}/secrets`;

    const garbage = await post(secrets, "{not json");
    assert.equal(garbage.status, 400);
    assert.equal(garbage.json.reason, "BadRequest");
    assert.match(String(garbage.json.message), /^couldn't get version\/kind; json parse error/);

    const wrongKind = await post(
      secrets,
      JSON.stringify({ kind: "ConfigMap", apiVersion: "v1", metadata: { name: "a" } }),
    );
    assert.equal(wrongKind.status, 400);

    const badName = await post(secrets, JSON.stringify({ metadata: { name: "Not_Valid" } }));
    assert.equal(badName.status, 422);
    assert.equal(badName.json.reason, "Invalid");
    assert.match(
      String(badName.json.message),
      /^Secret "Not_Valid" is invalid: metadata\.name: Invalid value: "Not_Valid"/,
    );

    const badData = await post(
      secrets,
      JSON.stringify({ metadata: { name: "a" }, data: { k: "not base64!" } }),
    );
    assert.equal(badData.status, 400);
    assert.deepEqual(fake.objectsOf("secrets", NS), [], "nothing was stored");

    const stringData = await post(
      secrets,
      JSON.stringify({ metadata: { name: "s" }, stringData: { k: "v" } }),
    );
    assert.equal(stringData.status, 201);
    assert.deepEqual(stringData.json.data, { k: "dg==" }, "stringData is folded into data");
    assert.equal(stringData.json.stringData, undefined);
    assert.equal(stringData.json.type, "Opaque");
  });
});
