// Issue 8, Deliver 6: the chart's RBAC rows for cert-manager are enough, and no more is needed.
// The chart is rendered for cert-manager with an Issuer; its ServiceAccount, Roles and bindings are
// installed in the fake API server with its RBAC authorizer on; the real server runs with the
// chart's own args as that ServiceAccount, signs through a CertificateRequest, and no request of
// it is refused (403).

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseAllDocuments } from "yaml";
import { KubeClient, type KubeObject, StaticToken } from "../../server/kubernetes/client.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { renderChart } from "../helpers/helm.js";
import { serviceCsrPem, tempDir } from "../helpers/pki.js";
import { type CliProcess, startServerProcess } from "../helpers/processes.js";
import { TestSigningClient } from "../helpers/signing-client.js";

const NS = "osm-system";
const SA_USER = `system:serviceaccount:${NS}:osm-cert`;
type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } } & Record<
  string,
  unknown
>;
const RBAC_KINDS: Record<string, { plural: string; namespaced: boolean }> = {
  ServiceAccount: { plural: "serviceaccounts", namespaced: true },
  ClusterRole: { plural: "clusterroles", namespaced: false },
  ClusterRoleBinding: { plural: "clusterrolebindings", namespaced: false },
  Role: { plural: "roles", namespaced: true },
  RoleBinding: { plural: "rolebindings", namespaced: true },
};

describe("cert-manager mode under the fake API server's RBAC authorizer, granted only what the chart grants", () => {
  let fake: FakeKubeApiServer;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: CliProcess | undefined;
  let address: string;

  before(async () => {
    const rendered = await renderChart({
      values: [{ certificateProvider: { kind: "cert-manager" }, webhook: { enabled: false } }],
    });
    if (!rendered.ok) assert.fail(`the chart did not render:\n${rendered.error}`);
    const objects: Obj[] = Object.values(rendered.manifests).flatMap((text) =>
      parseAllDocuments(text)
        .map((doc) => doc.toJS() as Obj | null)
        .filter((o): o is Obj => o !== null),
    );
    fake = await FakeKubeApiServer.start({ namespaces: [NS, "bookstore"], rbac: true });
    fake.addToken("installer-token", { username: "kubernetes-admin", groups: ["system:masters"] });
    const admin = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken("installer-token", "test"),
        namespace: NS,
        source: "test",
      },
      retry: { maxAttempts: 1 },
    });
    try {
      for (const kind of Object.keys(RBAC_KINDS)) {
        for (const object of objects.filter((o) => o.kind === kind)) {
          const [group, version] = object.apiVersion.includes("/")
            ? (object.apiVersion.split("/") as [string, string])
            : ["", object.apiVersion];
          const { plural, namespaced } = RBAC_KINDS[kind] as { plural: string; namespaced: boolean };
          await admin.create({ group, version, plural, kind, namespaced }, object as unknown as KubeObject, {
            ...(namespaced ? { namespace: object.metadata.namespace ?? NS } : {}),
          });
        }
      }
    } finally {
      await admin.close();
    }
    // What the operator sets up (README, cert-manager): the Issuer and the CA bundle Secret.
    fake.seed("issuers", { metadata: { name: "osm-ca", namespace: NS }, spec: { ca: { secretName: "k" } } });
    fake.seed("secrets", {
      metadata: { name: "osm-ca-bundle", namespace: NS },
      data: { "ca.crt": Buffer.from(await fake.certManager.caPem()).toString("base64") },
    });
    const deployment = objects.find((o) => o.kind === "Deployment" && o.metadata.name === "osm-cert");
    const [container] = (
      deployment?.spec as { template: { spec: { containers: { args: string[] }[] } } } | undefined
    )?.template.spec.containers ?? [{ args: [] }];
    const args = (container?.args ?? []).filter((a) => a !== "server" && !/^--(admin-)?listen=/.test(a));
    assert.ok(args.includes("--certificate-manager=cert-manager"), args.join(" "));
    dir = await tempDir();
    const kubeconfig = join(dir.path, "kubeconfig.json");
    await writeFile(
      kubeconfig,
      fake.kubeconfig(
        fake.serviceAccountToken(NS, "osm-cert", { expiresAt: new Date(Date.now() + 86_400_000) }),
      ),
    );
    ({ server, address } = await startServerProcess(null, [
      ...args,
      "--server-san=127.0.0.1",
      "--kubeconfig",
      kubeconfig,
    ]));
  });

  after(async () => {
    await server?.stop();
    await fake?.close();
    await dir?.remove();
  });

  test("start-up (sweep, issuer check, CA bundle, the watch), a signing through a CertificateRequest: no 403 at all", async () => {
    const caPem = await fake.certManager.caPem();
    const bearer = fake.serviceAccountToken("bookstore", "bookstore", { audiences: ["osm-cert"] });
    const client = new TestSigningClient(address, caPem, undefined, bearer);
    try {
      const response = await client.create(await serviceCsrPem("bookstore", "bookstore"));
      const leaf = new X509Certificate(response.certificate_chain[0] as string);
      assert.ok(leaf.verify(new X509Certificate(caPem).publicKey));
    } finally {
      client.close();
    }
    const mine = fake.requests.filter((r) => r.user === SA_USER);
    const used = new Set(mine.map((r) => `${r.verb} ${r.resource}`));
    for (const needed of [
      "create certificaterequests",
      "list certificaterequests",
      "watch certificaterequests",
      "delete certificaterequests",
      "get issuers",
      "get secrets",
      "watch secrets",
    ])
      assert.ok(used.has(needed), `the server never did "${needed}": ${[...used].join(", ")}`);
    assert.deepEqual(
      mine
        .filter((r) => r.status === 403)
        .map((r) => `${r.verb} ${r.resource} ${r.namespace ?? ""}/${r.name ?? ""}`),
      [],
      "requests the chart's RBAC does not allow",
    );
    assert.deepEqual(fake.objectsOf("certificaterequests", NS), []);
  });
});
