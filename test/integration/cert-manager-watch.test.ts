// The replica's one CertificateRequest watch (server/providers/cert-manager/request-watch.ts) against
// the fake API server over real HTTPS: label-selected to this replica's requests, one stream for
// any number of requests, a Ready that arrives before its waiter is not lost, a broken stream is
// resumed from the last version, an expired version (410) is re-listed, and a request deleted by
// someone else — even while the watch was away — ends its wait.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { generateKeyPair } from "../../common/keys.js";
import type { Logger } from "../../common/logger.js";
import { encodePem } from "../../common/pem.js";
import { createCsr } from "../../common/x509/csr.js";
import { KubeClient, StaticToken } from "../../server/kubernetes/client.js";
import { MANAGED_BY, ownLabelSelector } from "../../server/providers/cert-manager/cert-manager.js";
import { runCertificateRequest } from "../../server/providers/cert-manager/certificate-request.js";
import { CertificateRequestWatch } from "../../server/providers/cert-manager/request-watch.js";
import {
  CERTIFICATE_REQUESTS,
  type CertificateRequest,
  conditionOf,
} from "../../server/providers/cert-manager/resources.js";
import { ProviderError } from "../../server/providers/provider.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";

const NS = "osm-system";
const INSTANCE = "watch-test";

function recordingLogger(): Logger & { events: Record<string, unknown>[] } {
  const events: Record<string, unknown>[] = [];
  const at = () => (obj: Record<string, unknown>) => events.push(obj);
  return { events, info: at(), warn: at(), error: at(), debug: at() } as unknown as Logger & {
    events: typeof events;
  };
}

async function requestObject(cn: string, instance = INSTANCE): Promise<CertificateRequest> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const csr = encodePem("CERTIFICATE REQUEST", createCsr({ privateKey, commonName: cn, dnsNames: [cn] }));
  return {
    metadata: {
      generateName: "osm-cert-",
      namespace: NS,
      labels: { ...MANAGED_BY, "osm-cert.io/instance": instance },
    },
    spec: {
      request: Buffer.from(csr).toString("base64"),
      issuerRef: { name: "osm-ca", kind: "Issuer", group: "cert-manager.io" },
      usages: ["digital signature", "key encipherment", "client auth"],
    },
  };
}

describe("cert-manager: one label-selected CertificateRequest watch per replica", () => {
  let fake: FakeKubeApiServer;
  let client: KubeClient;
  let watch: CertificateRequestWatch;
  const logger = recordingLogger();

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
    });
    fake.seed("issuers", { metadata: { name: "osm-ca", namespace: NS }, spec: { ca: { secretName: "k" } } });
    watch = await CertificateRequestWatch.open({
      client,
      namespace: NS,
      labelSelector: ownLabelSelector(INSTANCE),
      logger,
    });
    while (watchCalls().length === 0) await new Promise((r) => setTimeout(r, 10));
  });

  after(async () => {
    await watch.close();
    await client.close();
    await fake.close();
  });

  const run = async (cn: string, deadlineMs = 5_000, viaClient: typeof client = client) =>
    runCertificateRequest({
      client: viaClient,
      watch,
      namespace: NS,
      object: await requestObject(cn),
      deadlineMs,
      preserve: false,
    });
  const watchCalls = () =>
    fake.requests.filter((r) => r.verb === "watch" && r.resource === "certificaterequests");

  test("20 requests at once ride one watch selected by our labels; another replica's requests never reach it", async () => {
    const before = watchCalls().length;
    // Another replica's request, in flight meanwhile: not ours to hear about.
    const foreign = await client.create(
      CERTIFICATE_REQUESTS,
      await requestObject("f.x.cluster.local", "other"),
      {
        namespace: NS,
      },
    );
    const heard: (CertificateRequest | null)[] = [];
    const stop = watch.follow(foreign.metadata?.name as string, (r) => heard.push(r));
    const outcomes = await Promise.all(Array.from({ length: 20 }, (_, i) => run(`s${i}.x.cluster.local`)));
    assert.equal(outcomes.length, 20);
    for (const o of outcomes) assert.match(o.certificatePem, /BEGIN CERTIFICATE/);
    assert.equal(watchCalls().length, before, "no watch per request");
    const query = new URL(`https://x${watchCalls().at(-1)?.path}`).searchParams;
    assert.equal(
      query.get("labelSelector"),
      `app.kubernetes.io/managed-by=osm-cert,osm-cert.io/instance=${INSTANCE}`,
    );
    // Signed meanwhile by the fake's issuer, yet never delivered to this replica's watch.
    assert.equal(
      conditionOf(fake.object("certificaterequests", NS, foreign.metadata?.name as string) as never, "Ready")
        ?.status,
      "True",
    );
    assert.deepEqual(heard, []);
    stop();
    await client.delete(CERTIFICATE_REQUESTS, foreign.metadata?.name as string, { namespace: NS });
    assert.deepEqual(fake.objectsOf("certificaterequests", NS), []);
    assert.equal(watch.size, 0, "nothing kept once requests are gone");
  });

  test("a Ready that the watch saw before the create's answer arrived is not lost", async () => {
    // The create's answer reaches the provider only after the issuer signed and the watch heard it.
    const slowAnswer = Object.create(client) as KubeClient;
    slowAnswer.create = (async (...args: Parameters<KubeClient["create"]>) => {
      const created = await client.create(...args);
      const name = created.metadata?.name as string;
      for (let i = 0; i < 200; i++) {
        const now = fake.object("certificaterequests", NS, name);
        if (now && conditionOf(now as never, "Ready")?.status === "True") break;
        await new Promise((r) => setTimeout(r, 10));
      }
      await new Promise((r) => setTimeout(r, 200)); // the watch event is delivered meanwhile
      assert.equal(
        conditionOf(created as CertificateRequest, "Ready"),
        undefined,
        "the create's answer predates the signature",
      );
      return created;
    }) as KubeClient["create"];
    const started = Date.now();
    const outcome = await run("early.x.cluster.local", 5_000, slowAnswer);
    assert.match(outcome.certificatePem, /BEGIN CERTIFICATE/);
    assert.ok(Date.now() - started < 4_000, "answered from what the watch had kept, not at the deadline");
  });

  test("a broken stream is resumed from the last version; an expired version is re-listed", async () => {
    fake.certManager.behave({ mode: "approve", latencyMs: 400 });
    try {
      const before = watchCalls().length;
      const pending = run("resumed.x.cluster.local");
      await new Promise((r) => setTimeout(r, 100));
      fake.dropWatches(); // connection reset mid-stream
      assert.match((await pending).certificatePem, /BEGIN CERTIFICATE/);
      assert.ok(watchCalls().length > before, "watched again");

      const relists = logger.events.filter((e) => e.event === "cert_manager.watch_relist").length;
      const gone = run("relisted.x.cluster.local");
      await new Promise((r) => setTimeout(r, 100));
      fake.dropWatches();
      // Someone else writes, then the server compacts: the version we saw last is too old now
      // (410 Expired), so the watch must list again.
      fake.seed("configmaps", { metadata: { name: "unrelated", namespace: NS }, data: {} });
      fake.compact();
      assert.match((await gone).certificatePem, /BEGIN CERTIFICATE/);
      assert.equal(logger.events.filter((e) => e.event === "cert_manager.watch_relist").length, relists + 1);
    } finally {
      fake.certManager.reset();
    }
  });

  test("deleted by someone else: the wait ends at once, also when the delete happened while the watch was away", async () => {
    fake.certManager.behave({ mode: "stall" });
    try {
      const seen = async () => {
        for (;;) {
          const found = fake
            .objectsOf("certificaterequests", NS)
            .find((o) => (o.metadata as { name: string }).name.startsWith("osm-cert-"));
          if (found) return (found.metadata as { name: string }).name;
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      const live = run("gone.x.cluster.local");
      await client.delete(CERTIFICATE_REQUESTS, await seen(), { namespace: NS });
      await assert.rejects(
        live,
        (e: ProviderError) => e.reason === "unavailable" && /deleted by someone else/.test(e.message),
      );

      const relists = logger.events.filter((e) => e.event === "cert_manager.watch_relist").length;
      const away = run("away.x.cluster.local");
      const name = await seen();
      await new Promise((r) => setTimeout(r, 100)); // the waiter is registered
      const allow = fake.deny({ verb: "watch", resource: "certificaterequests" });
      fake.dropWatches();
      await client.delete(CERTIFICATE_REQUESTS, name, { namespace: NS });
      fake.compact(); // the DELETED event is no longer replayable: only a list can tell
      allow();
      await assert.rejects(
        away,
        (e: ProviderError) => e.reason === "unavailable" && /deleted by someone else/.test(e.message),
      );
      assert.equal(
        logger.events.filter((e) => e.event === "cert_manager.watch_relist").length,
        relists + 1,
        "learnt from a list, not from a replayed event",
      );
    } finally {
      fake.certManager.reset();
    }
    assert.deepEqual(fake.objectsOf("certificaterequests", NS), []);
  });

  test("a stalled request times out naming the missing step, and is deleted", async () => {
    fake.certManager.behave({ mode: "stall" });
    try {
      await assert.rejects(
        run("late.x.cluster.local", 1_500),
        (e: ProviderError) =>
          e instanceof ProviderError && e.reason === "deadline" && /not approved/.test(e.message),
      );
    } finally {
      fake.certManager.reset();
    }
    assert.deepEqual(fake.objectsOf("certificaterequests", NS), []);
  });
});
