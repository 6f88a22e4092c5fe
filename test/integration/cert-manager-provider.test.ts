// The cert-manager provider in-process against the fake API server over real HTTPS: what it does
// with answers it must not pass on (a chain to another CA, another key), --cert-manager-preserve-requests,
// and the in-flight limiter's queue.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { generateKeyPair } from "../../common/keys.js";
import type { Logger } from "../../common/logger.js";
import { encodePem } from "../../common/pem.js";
import { createCsr, parseCsrPem } from "../../common/x509/csr.js";
import { KubeClient, StaticToken } from "../../server/kubernetes/client.js";
import { CertManagerProvider } from "../../server/providers/cert-manager/cert-manager.js";
import { InFlightLimiter } from "../../server/providers/cert-manager/in-flight.js";
import { type IssueRequest, ProviderError } from "../../server/providers/provider.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { openTestCa, tempDir } from "../helpers/pki.js";

const NS = "osm-system";

function recordingLogger(): Logger & {
  lines: { level: string; obj: Record<string, unknown>; msg: string }[];
} {
  const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
  const at =
    (level: string) =>
    (obj: Record<string, unknown>, msg = "") =>
      lines.push({ level, obj, msg });
  const logger = { lines, info: at("info"), warn: at("warn"), error: at("error"), debug: at("debug") };
  return logger as unknown as Logger & { lines: typeof lines };
}

async function issueRequest(cn: string): Promise<IssueRequest> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const csrPem = encodePem("CERTIFICATE REQUEST", createCsr({ privateKey, commonName: cn, dnsNames: [cn] }));
  return {
    csrPem,
    csr: parseCsrPem(csrPem),
    profile: "service",
    commonName: cn,
    dnsNames: [cn],
    uris: [],
    ipAddresses: [],
    validityMs: 3_600_000,
  };
}

describe("cert-manager provider against the fake", () => {
  let fake: FakeKubeApiServer;
  let client: KubeClient;
  let dir: Awaited<ReturnType<typeof tempDir>>;

  before(async () => {
    dir = await tempDir();
    fake = await FakeKubeApiServer.start({ namespaces: [NS] });
    client = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken(fake.serviceAccountToken(NS, "osm-cert"), "test"),
        namespace: NS,
        source: "test",
      },
    });
    fake.seed("issuers", { metadata: { name: "osm-ca", namespace: NS }, spec: { ca: { secretName: "k" } } });
  });

  after(async () => {
    await client.close();
    await fake.close();
    await dir.remove();
  });

  const open = (logger: Logger, preserveRequests = false, secret = "osm-ca-bundle") =>
    CertManagerProvider.open({
      client,
      namespace: NS,
      issuer: { name: "osm-ca", kind: "Issuer", group: "cert-manager.io" },
      caBundleSecretName: secret,
      preserveRequests,
      requestTimeoutMs: 5_000,
      maxInFlight: 4,
      maxQueued: 16,
      logger,
      instance: "provider-test",
    });

  test("ca.crt holding another CA than the issuer's: the certificate is refused (INTERNAL, logged), the request deleted", async () => {
    const other = (await openTestCa(`${dir.path}/other`)).trustBundle().roots[0] as string;
    fake.seed("secrets", {
      metadata: { name: "wrong-bundle", namespace: NS },
      data: { "ca.crt": Buffer.from(other).toString("base64") },
    });
    const logger = recordingLogger();
    const provider = await open(logger, false, "wrong-bundle");
    try {
      const error = await provider.issue(await issueRequest("a.b.cluster.local")).catch((e) => e);
      assert.ok(error instanceof ProviderError);
      assert.equal(error.reason, "internal");
      assert.match(error.message, /does not lead to any root in ca\.crt/);
      assert.ok(
        logger.lines.some((l) => l.level === "error" && l.obj.event === "cert_manager.bad_certificate"),
      );
      assert.deepEqual(fake.objectsOf("certificaterequests", NS), []);
    } finally {
      await provider.close();
    }
  });

  test("--cert-manager-preserve-requests keeps finished requests; a normal start-up sweeps this instance's", async () => {
    fake.seed("secrets", {
      metadata: { name: "osm-ca-bundle", namespace: NS },
      data: { "ca.crt": Buffer.from(await fake.certManager.caPem()).toString("base64") },
    });
    const keeping = await open(recordingLogger(), true);
    try {
      const issued = await keeping.issue(await issueRequest("kept.b.cluster.local"));
      assert.equal(issued.chainPem.length, 1);
      const kept = fake.objectsOf("certificaterequests", NS);
      assert.equal(kept.length, 1);
      const request = kept[0] as { metadata: { labels: Record<string, string> }; spec: unknown };
      const labels = request.metadata.labels;
      assert.deepEqual(labels, {
        "app.kubernetes.io/managed-by": "osm-cert",
        "osm-cert.io/instance": "provider-test",
        "osm-cert.io/identity": "kept.b.cluster.local",
        "osm-cert.io/profile": "service",
      });
      const spec = request.spec as { usages: string[]; duration: string; issuerRef: Record<string, string> };
      assert.deepEqual(spec.usages, ["digital signature", "key encipherment", "server auth", "client auth"]);
      assert.equal(spec.duration, "1h0m0s");
      assert.deepEqual(spec.issuerRef, { name: "osm-ca", kind: "Issuer", group: "cert-manager.io" });
    } finally {
      await keeping.close();
    }
    const sweeping = await open(recordingLogger());
    await sweeping.close();
    assert.deepEqual(fake.objectsOf("certificaterequests", NS), []);
  });
});

describe("in-flight limiter", () => {
  test("grants up to the bound, queues up to its size, refuses beyond, times waiters out, lets aborted callers leave", async () => {
    const limiter = new InFlightLimiter({ maxInFlight: 2, maxQueued: 2, maxWaitMs: 200 });
    const a = await limiter.acquire();
    const b = await limiter.acquire();
    assert.equal(limiter.inFlight, 2);
    const abort = new AbortController();
    const queued = limiter.acquire();
    const leaving = limiter.acquire(abort.signal);
    await assert.rejects(
      limiter.acquire(),
      (e: ProviderError) => e.reason === "exhausted" && /retry/.test(e.message),
    );
    abort.abort();
    await assert.rejects(leaving, (e: ProviderError) => e.reason === "deadline");
    assert.equal(limiter.queued, 1);
    a();
    a(); // a second release of the same slot changes nothing
    const c = await queued;
    assert.equal(limiter.inFlight, 2);
    const late = limiter.acquire();
    await assert.rejects(late, (e: ProviderError) => e.reason === "exhausted" && /waited/.test(e.message));
    b();
    c();
    assert.equal(limiter.inFlight, 0);
    assert.equal(limiter.queued, 0);
  });

  test("the serving certificate's request jumps the queue and is never refused for its size", async () => {
    const limiter = new InFlightLimiter({ maxInFlight: 1, maxQueued: 1, maxWaitMs: 2_000 });
    const held = await limiter.acquire();
    const order: string[] = [];
    const agent = limiter.acquire().then((release) => {
      order.push("agent");
      return release;
    });
    await assert.rejects(limiter.acquire(), (e: ProviderError) => e.reason === "exhausted");
    const serving = limiter.acquire(undefined, true).then((release) => {
      order.push("serving");
      return release;
    });
    held();
    (await serving)();
    (await agent)();
    assert.deepEqual(order, ["serving", "agent"]);
    assert.equal(limiter.inFlight, 0);
  });
});
