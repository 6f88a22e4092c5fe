// Issue 8, Deliver 6: the chart's RBAC rows for cert-manager are enough, and no more is needed.
// The chart is rendered for cert-manager with an Issuer; its ServiceAccount, Roles and bindings are
// installed in the fake API server with its RBAC authorizer on; the real server runs with the
// chart's own args as that ServiceAccount, signs through a CertificateRequest, and no request of
// it is refused (403).

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { parseAllDocuments } from "yaml";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import {
  assertChartRbacSuffices,
  type ChartObject,
  chartServerArgs,
  installChart,
  renderChart,
  startChartServer,
} from "../helpers/helm.js";
import { serviceCsrPem, tempDir } from "../helpers/pki.js";
import type { CliProcess } from "../helpers/processes.js";
import { TestSigningClient } from "../helpers/signing-client.js";

const NS = "osm-system";
const SA_USER = `system:serviceaccount:${NS}:osm-cert`;
/** What this test installs of the chart: its ServiceAccounts and RBAC, nothing else. */
const RBAC_KINDS = new Set(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]);

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
    const objects: ChartObject[] = Object.values(rendered.manifests).flatMap((text) =>
      parseAllDocuments(text)
        .map((doc) => doc.toJS() as ChartObject | null)
        .filter((o): o is ChartObject => o !== null),
    );
    fake = await FakeKubeApiServer.start({ namespaces: [NS, "bookstore"], rbac: true });
    await installChart(
      fake,
      objects.filter((o) => RBAC_KINDS.has(o.kind)),
      NS,
    );
    // What the operator sets up (README, cert-manager): the Issuer and the CA bundle Secret.
    fake.seed("issuers", { metadata: { name: "osm-ca", namespace: NS }, spec: { ca: { secretName: "k" } } });
    fake.seed("secrets", {
      metadata: { name: "osm-ca-bundle", namespace: NS },
      data: { "ca.crt": Buffer.from(await fake.certManager.caPem()).toString("base64") },
    });
    const args = chartServerArgs(objects);
    assert.ok(args.includes("--certificate-manager=cert-manager"), args.join(" "));
    dir = await tempDir();
    ({ server, address } = await startChartServer(fake, args, dir.path, NS));
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
    assertChartRbacSuffices(fake, SA_USER, [
      "create certificaterequests",
      "list certificaterequests",
      "watch certificaterequests",
      "delete certificaterequests",
      "get issuers",
      "get secrets",
      "watch secrets",
    ]);
    assert.deepEqual(fake.objectsOf("certificaterequests", NS), []);
  });
});
