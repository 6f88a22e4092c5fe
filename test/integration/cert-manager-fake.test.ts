// The fake API server's cert-manager support, over real HTTPS with our client: validation with
// 422 Invalid bodies, status subresource semantics, the signer's outcomes seen through a watch,
// and the "cert-manager not installed" switch.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { generateKeyPair } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { createCsr } from "../../common/x509/csr.js";
import { isNotFound, KubeApiError, KubeClient, StaticToken } from "../../server/kubernetes/client.js";
import {
  CERTIFICATE_REQUESTS,
  type CertificateRequest,
  conditionOf,
  issuerType,
} from "../../server/providers/cert-manager/resources.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";

const NS = "osm-system";

async function csrBase64(commonName: string, ips: string[] = []): Promise<string> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const der = createCsr({ privateKey, commonName, dnsNames: [commonName], ipAddresses: ips });
  return Buffer.from(encodePem("CERTIFICATE REQUEST", der)).toString("base64");
}

function request(request: string, extra: Partial<CertificateRequest["spec"]> = {}): CertificateRequest {
  return {
    metadata: { generateName: "osm-cert-", namespace: NS },
    spec: { request, issuerRef: { name: "osm-ca", kind: "Issuer", group: "cert-manager.io" }, ...extra },
  };
}

describe("fake API server: cert-manager.io/v1", () => {
  let fake: FakeKubeApiServer;
  let client: KubeClient;

  before(async () => {
    fake = await FakeKubeApiServer.start({ namespaces: [NS] });
    client = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken(fake.serviceAccountToken(NS, "osm-cert"), "test"),
        namespace: NS,
        source: "test",
      },
      retry: { maxAttempts: 1 },
    });
    fake.seed("issuers", {
      metadata: { name: "osm-ca", namespace: NS },
      spec: { ca: { secretName: "osm-ca-key-pair" } },
    });
  });

  after(async () => {
    await client.close();
    await fake.close();
  });

  /** Watches one request until `done` holds; returns every state seen. */
  async function follow(
    created: CertificateRequest,
    done: (cr: CertificateRequest) => boolean,
  ): Promise<CertificateRequest[]> {
    const seen: CertificateRequest[] = [];
    const stop = new AbortController();
    const timer = setTimeout(() => stop.abort(), 5_000);
    try {
      for await (const event of client.watch(CERTIFICATE_REQUESTS, {
        namespace: NS,
        fieldSelector: `metadata.name=${created.metadata?.name}`,
        resourceVersion: created.metadata?.resourceVersion as string,
        signal: stop.signal,
      })) {
        if (event.type === "BOOKMARK") continue;
        seen.push(event.object);
        if (done(event.object)) break;
      }
    } finally {
      clearTimeout(timer);
    }
    return seen;
  }

  test("validation: missing request, non-base64, not a CSR, no issuer name, unknown usage → 422 Invalid", async () => {
    const good = await csrBase64("a.b.cluster.local");
    const cases: [CertificateRequest, RegExp][] = [
      [request(""), /spec\.request: Required value/],
      [request("not base64!"), /spec\.request in body must be of type byte/],
      [request(Buffer.from("hello").toString("base64")), /failed to decode csr/],
      [
        { ...request(good), spec: { request: good, issuerRef: { name: "" } } },
        /spec\.issuerRef\.name: Required/,
      ],
      [request(good, { usages: ["server auth", "teleport"] }), /spec\.usages\[1\].*unknown keyusage/],
      [request(good, { duration: "a day" }), /spec\.duration/],
    ];
    for (const [object, expected] of cases) {
      const error = await client.create(CERTIFICATE_REQUESTS, object, { namespace: NS }).catch((e) => e);
      assert.ok(error instanceof KubeApiError, String(error));
      assert.equal(error.status, 422);
      assert.equal(error.reason, "Invalid");
      assert.match(error.message, expected);
    }
    assert.equal(fake.objectsOf("certificaterequests", NS).length, 0);
    assert.equal(fake.certManager.stats().created, 0);
  });

  test("an Issuer needs exactly one type; a CA issuer needs its secret name", () => {
    assert.throws(
      () => fake.seed("issuers", { metadata: { name: "x", namespace: NS }, spec: {} }),
      /at least one issuer type/,
    );
    assert.throws(
      () =>
        fake.seed("issuers", { metadata: { name: "x", namespace: NS }, spec: { ca: {}, selfSigned: {} } }),
      /more than one issuer type/,
    );
    assert.throws(
      () => fake.seed("clusterissuers", { metadata: { name: "x" }, spec: { ca: {} } }),
      /secretName/,
    );
  });

  test("approve: Approved, then Ready=True with the chain and the CA; duration and usages honoured", async () => {
    const created = await client.create(
      CERTIFICATE_REQUESTS,
      request(await csrBase64("bookstore.bookstore.cluster.local", ["10.0.0.7"]), {
        duration: "2h0m0s",
        usages: ["digital signature", "key encipherment", "server auth", "client auth"],
      }),
      { namespace: NS },
    );
    assert.equal(created.status, undefined, "status is not set by create");
    const seen = await follow(created, (cr) => conditionOf(cr, "Ready")?.status === "True");
    assert.ok(seen.some((cr) => conditionOf(cr, "Approved")?.status === "True" && !conditionOf(cr, "Ready")));
    const done = seen.at(-1) as CertificateRequest;
    const leaf = new X509Certificate(Buffer.from(done.status?.certificate as string, "base64").toString());
    const ca = new X509Certificate(Buffer.from(done.status?.ca as string, "base64").toString());
    assert.equal(ca.raw.equals(new X509Certificate(await fake.certManager.caPem()).raw), true);
    assert.ok(leaf.verify(ca.publicKey));
    const lifetime = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
    assert.ok(Math.abs(lifetime - 2 * 3_600_000) <= 2_000, `lifetime ${lifetime}`);
    assert.match(leaf.subjectAltName ?? "", /IP Address:10\.0\.0\.7/);
    assert.deepEqual([...(leaf.keyUsage ?? [])].sort(), ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
  });

  test("deny, fail, invalid, per common name; stall leaves it untouched; a missing issuer stays Pending", async () => {
    fake.certManager.behave({ mode: "deny", message: "not on my watch" }, "denied.x.cluster.local");
    fake.certManager.behave({ mode: "fail", message: "CA key is gone" }, "failed.x.cluster.local");
    fake.certManager.behave(
      { mode: "invalid", reason: "BadCSR", message: "CN not in DNS names" },
      "invalid.x.cluster.local",
    );
    fake.certManager.behave({ mode: "stall" }, "stalled.x.cluster.local");
    try {
      const outcome = async (cn: string) => {
        const created = await client.create(CERTIFICATE_REQUESTS, request(await csrBase64(cn)), {
          namespace: NS,
        });
        const seen = await follow(created, (cr) => conditionOf(cr, "Ready")?.status === "False");
        return seen.at(-1) as CertificateRequest;
      };
      const denied = await outcome("denied.x.cluster.local");
      assert.equal(conditionOf(denied, "Denied")?.message, "not on my watch");
      assert.equal(conditionOf(denied, "Ready")?.reason, "Denied");
      assert.ok(denied.status?.failureTime);
      assert.equal(conditionOf(denied, "Approved"), undefined);

      const failed = await outcome("failed.x.cluster.local");
      assert.equal(conditionOf(failed, "Ready")?.reason, "Failed");
      assert.equal(conditionOf(failed, "Ready")?.message, "CA key is gone");
      assert.ok(failed.status?.failureTime);

      const invalid = await outcome("invalid.x.cluster.local");
      assert.equal(conditionOf(invalid, "InvalidRequest")?.reason, "BadCSR");
      assert.equal(conditionOf(invalid, "Ready")?.reason, "Failed");

      const stalled = await client.create(
        CERTIFICATE_REQUESTS,
        request(await csrBase64("stalled.x.cluster.local")),
        { namespace: NS },
      );
      await new Promise((r) => setTimeout(r, 200));
      const still = await client.get(CERTIFICATE_REQUESTS, stalled.metadata?.name as string, {
        namespace: NS,
      });
      assert.equal(still.status, undefined);

      const orphan = await client.create(
        CERTIFICATE_REQUESTS,
        {
          ...request(await csrBase64("orphan.x.cluster.local")),
          spec: { request: await csrBase64("o.x.cluster.local"), issuerRef: { name: "nope" } },
        },
        { namespace: NS },
      );
      const pending = (await follow(orphan, (cr) => conditionOf(cr, "Ready") !== undefined)).at(-1);
      assert.equal(conditionOf(pending as CertificateRequest, "Ready")?.reason, "Pending");
      assert.match(conditionOf(pending as CertificateRequest, "Ready")?.message ?? "", /"nope" not found/);
    } finally {
      fake.certManager.reset();
    }
  });

  test("status subresource: writes to the object keep status and spec is immutable; /status writes status only", async () => {
    fake.certManager.behave({ mode: "stall" });
    try {
      const created = await client.create(
        CERTIFICATE_REQUESTS,
        request(await csrBase64("s.x.cluster.local")),
        {
          namespace: NS,
        },
      );
      const name = created.metadata?.name as string;
      const patched = await client.patch(
        CERTIFICATE_REQUESTS,
        name,
        { status: { certificate: "Zm9v" } },
        { namespace: NS },
      );
      assert.equal(patched.status, undefined, "status ignored on the main resource");
      const error = await client
        .patch(CERTIFICATE_REQUESTS, name, { spec: { duration: "1h" } }, { namespace: NS })
        .catch((e) => e);
      assert.ok(error instanceof KubeApiError);
      assert.equal(error.status, 422);
      assert.match(error.message, /spec: Forbidden: field is immutable/);
      const statusWrite = fake.writeStatus("certificaterequests", NS, name, { certificate: "Zm9v" });
      assert.equal((statusWrite.status as { certificate: string }).certificate, "Zm9v");
      await client.delete(CERTIFICATE_REQUESTS, name, { namespace: NS });
    } finally {
      fake.certManager.reset();
    }
  });

  test("the issuer controller marks a CA Issuer Ready; a cluster without cert-manager answers 404 on the group", async () => {
    const issuers = issuerType("Issuer", "cert-manager.io");
    const issuer = await client.get(issuers, "osm-ca", { namespace: NS });
    assert.equal(conditionOf(issuer, "Ready")?.status, "True");
    fake.setGroupInstalled("cert-manager.io", false);
    try {
      const error = await client.get(issuers, "osm-ca", { namespace: NS }).catch((e) => e);
      assert.ok(isNotFound(error));
      assert.equal((error as KubeApiError).details?.name, undefined, "the generic 404, not a named object");
      assert.match((error as KubeApiError).message, /could not find the requested resource/);
    } finally {
      fake.setGroupInstalled("cert-manager.io", true);
    }
  });

  test("the signer counts live requests and the most at once", async () => {
    for (const cr of fake.objectsOf("certificaterequests", NS)) {
      await client.delete(CERTIFICATE_REQUESTS, (cr.metadata as { name: string }).name, { namespace: NS });
    }
    fake.certManager.reset();
    const base = fake.certManager.stats();
    assert.equal(base.live, 0);
    const made = await Promise.all(
      [1, 2, 3].map(async (i) =>
        client.create(CERTIFICATE_REQUESTS, request(await csrBase64(`c${i}.x.cluster.local`)), {
          namespace: NS,
        }),
      ),
    );
    for (const cr of made)
      await client.delete(CERTIFICATE_REQUESTS, cr.metadata?.name as string, { namespace: NS });
    const stats = fake.certManager.stats();
    assert.equal(stats.maxLive, 3);
    assert.equal(stats.live, 0);
    assert.equal(stats.created - base.created, 3);
  });
});
