// The real webhook over real HTTPS, started in-process from its flags with a Tresor CA directory:
// AdmissionReviews shaped like the API server's, sent to a server whose certificate is verified
// against the mesh root under the Service's DNS name; patches applied and validated as Pods;
// hostile input; serving-certificate renewal seen on new connections; metrics and readiness.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { request } from "node:https";
import { connect } from "node:net";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect as tlsConnect } from "node:tls";
import jsonpatch from "fast-json-patch";
import { Pod } from "kubernetes-models/v1";
import type { RunningWebhook } from "../../webhook/main.js";
import { type CapturedLog, captureLog } from "../helpers/log-capture.js";
import { admissionReview, type Json, osmInjectedPod } from "../helpers/osm-pods.js";
import { openTestCa, tempDir } from "../helpers/pki.js";
import { runCli, startCli } from "../helpers/processes.js";
import { startWebhookWithCaDir } from "../helpers/webhook.js";

const SERVICE_DNS = "osm-cert-webhook.osm-system.svc";

interface HttpsAnswer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
  readonly peer: X509Certificate;
}

/** One request on its own TLS connection, the server verified as the API server verifies it. */
function send(
  address: string,
  rootPem: string,
  options: {
    method?: string;
    path?: string;
    contentType?: string;
    body?: string | Buffer;
    servername?: string;
  } = {},
): Promise<HttpsAnswer> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(":")),
    Number(address.slice(address.lastIndexOf(":") + 1)),
  ];
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port,
        method: options.method ?? "POST",
        path: options.path ?? "/mutate-pod-v1?timeout=10s",
        ca: rootPem,
        servername: options.servername ?? SERVICE_DNS,
        agent: false,
        headers: { "content-type": options.contentType ?? "application/json" },
      },
      (res) => {
        const peer = new X509Certificate(
          (res.socket as import("node:tls").TLSSocket).getPeerCertificate(false).raw,
        );
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
            peer,
          }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(options.body);
  });
}

interface Review {
  apiVersion: string;
  kind: string;
  response: {
    uid: string;
    allowed: boolean;
    patchType?: string;
    patch?: string;
    status?: { code: number; message: string };
  };
}

describe("osm-cert webhook over HTTPS", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let rootPem: string;
  let webhook: RunningWebhook;
  let log: CapturedLog;
  const stop = new AbortController();

  const admit = async (review: Json): Promise<Review> => {
    const answer = await send(webhook.address, rootPem, { body: JSON.stringify(review) });
    assert.equal(answer.status, 200, answer.body);
    assert.equal(answer.headers["content-type"], "application/json");
    const parsed = JSON.parse(answer.body) as Review;
    assert.equal(parsed.apiVersion, "admission.k8s.io/v1");
    assert.equal(parsed.kind, "AdmissionReview");
    assert.equal(parsed.response.uid, (review.request as Json).uid, "the answer carries the request's uid");
    return parsed;
  };

  before(async () => {
    dir = await tempDir();
    const ca = await openTestCa(dir.path);
    rootPem = ca.trustBundle().roots.join("");
    log = captureLog("webhook");
    webhook = await startWebhookWithCaDir(dir.path, log.logger, stop.signal);
  });

  after(async () => {
    stop.abort();
    await webhook?.close();
    await dir?.remove();
  });

  test("serves the webhook certificate kind for its Service, chained to the mesh root", async () => {
    const { peer } = await send(webhook.address, rootPem, { method: "GET", path: "/" });
    assert.equal(peer.subject, `CN=${SERVICE_DNS}`);
    assert.equal(peer.subjectAltName, `DNS:${SERVICE_DNS}, DNS:${SERVICE_DNS}.cluster.local`);
    assert.ok(peer.checkIssued(new X509Certificate(rootPem)));
    assert.deepEqual(peer.keyUsage, ["1.3.6.1.5.5.7.3.1"], "serverAuth only");
    const lifetimeH = (Date.parse(peer.validTo) - Date.now()) / 3_600_000;
    assert.ok(lifetimeH > 23.9 && lifetimeH <= 24, `24h validity, got ${lifetimeH}h`);
    // The long Service name verifies too, and a name not in the certificate does not.
    await send(webhook.address, rootPem, {
      method: "GET",
      path: "/",
      servername: `${SERVICE_DNS}.cluster.local`,
    });
    await assert.rejects(
      send(webhook.address, rootPem, { method: "GET", path: "/", servername: "osm-cert.osm-system.svc" }),
      /ERR_TLS_CERT_ALTNAME_INVALID|does not match/,
    );
  });

  test("an OSM pod gets the agent; the patched pod is valid, and re-submitted gets no patch", async () => {
    const pod = osmInjectedPod();
    const answer = await admit(admissionReview(pod));
    assert.equal(answer.response.allowed, true);
    assert.equal(answer.response.patchType, "JSONPatch");
    const patch = JSON.parse(
      Buffer.from(answer.response.patch ?? "", "base64").toString(),
    ) as jsonpatch.Operation[];
    const patched = jsonpatch.applyPatch(structuredClone(pod), patch, true, false).newDocument;
    new Pod(patched as ConstructorParameters<typeof Pod>[0]).validate();
    const spec = patched.spec as { initContainers: Json[]; containers: Json[] };
    assert.deepEqual(
      spec.initContainers.map((c) => [c.name, c.restartPolicy]),
      [
        ["osm-init", undefined],
        ["osm-cert-agent", "Always"],
      ],
    );
    assert.equal(spec.initContainers[1]?.image, "openservicemesh/osm-cert:0.1.0");
    assert.ok(
      ((spec.containers[1]?.volumeMounts ?? []) as Json[]).some((m) => m.name === "osm-cert-sds"),
      "Envoy mounts the socket volume",
    );
    const again = await admit(admissionReview(patched));
    assert.equal(again.response.allowed, true);
    assert.equal(again.response.patch, undefined);
    assert.equal(again.response.patchType, undefined);
    assert.ok(log.lines.some((l) => l.event === "admission.injected" && l.namespace === "bookstore"));
  });

  test("pods not ours pass unchanged; pods we cannot serve are denied with a reason", async () => {
    const foreign = osmInjectedPod();
    (foreign.spec as { containers: Json[] }).containers.pop();
    const skipped = await admit(admissionReview(foreign));
    assert.deepEqual(skipped.response, { uid: skipped.response.uid, allowed: true });

    const hostNetwork = osmInjectedPod();
    (hostNetwork.spec as Json).hostNetwork = true;
    const refused = await admit(admissionReview(hostNetwork));
    assert.equal(refused.response.allowed, false);
    assert.equal(refused.response.status?.code, 403);
    assert.match(refused.response.status?.message ?? "", /^osm-cert: .*hostNetwork/);
    assert.equal(refused.response.patch, undefined);

    const malformed = await admit(admissionReview({ kind: "Pod", spec: { containers: "envoy" } }));
    assert.equal(malformed.response.allowed, false);
    assert.match(malformed.response.status?.message ?? "", /malformed pod: spec.containers is not a list/);

    const update = await admit(admissionReview(osmInjectedPod(), { operation: "UPDATE" }));
    assert.deepEqual(update.response, { uid: update.response.uid, allowed: true });
  });

  test("an AdmissionReview for something other than a Pod is answered, denied with 400", async () => {
    const deployment = admissionReview(osmInjectedPod(), {
      kind: { group: "apps", version: "v1", kind: "Deployment" },
      resource: { group: "apps", version: "v1", resource: "deployments" },
    });
    const answer = await admit(deployment);
    assert.equal(answer.response.allowed, false);
    assert.equal(answer.response.status?.code, 400);
    assert.match(answer.response.status?.message ?? "", /serves v1 Pods/);
    const noObject = await admit(admissionReview(osmInjectedPod(), { object: null }));
    assert.equal(noObject.response.allowed, false);
    assert.match(noObject.response.status?.message ?? "", /CREATE request carries no object/);
  });

  test("what we do not mutate is never blocked: DELETE (no object), subresources", async () => {
    const deletion = await admit(admissionReview(osmInjectedPod(), { operation: "DELETE", object: null }));
    assert.deepEqual(deletion.response, { uid: deletion.response.uid, allowed: true });
    const debug = await admit(admissionReview(osmInjectedPod(), { subResource: "ephemeralcontainers" }));
    assert.deepEqual(debug.response, { uid: debug.response.uid, allowed: true });
  });

  test("hostile input gets a clear HTTP error and the server keeps serving", async () => {
    const cases: [string, Parameters<typeof send>[2], number, RegExp][] = [
      ["garbage", { body: "{not json" }, 400, /not JSON/],
      ["an array", { body: "[]" }, 400, /not a JSON object/],
      [
        "wrong version",
        {
          body: JSON.stringify({
            ...admissionReview(osmInjectedPod()),
            apiVersion: "admission.k8s.io/v1beta1",
          }),
        },
        400,
        /expected an admission.k8s.io\/v1 AdmissionReview/,
      ],
      [
        "wrong kind",
        { body: JSON.stringify({ ...admissionReview(osmInjectedPod()), kind: "TokenReview" }) },
        400,
        /AdmissionReview/,
      ],
      [
        "no request",
        { body: JSON.stringify({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview" }) },
        400,
        /no request/,
      ],
      [
        "no uid",
        { body: JSON.stringify(admissionReview(osmInjectedPod(), { uid: undefined })) },
        400,
        /no valid uid/,
      ],
      ["wrong content type", { body: "{}", contentType: "text/plain" }, 415, /application\/json/],
      ["GET", { method: "GET" }, 405, /only POST/],
      ["another path", { path: "/validate" }, 404, /mutate-pod-v1/],
    ];
    for (const [name, options, status, message] of cases) {
      const answer = await send(webhook.address, rootPem, options);
      assert.equal(answer.status, status, `${name}: ${answer.body}`);
      assert.match(answer.body, message, name);
    }
    const huge = await send(webhook.address, rootPem, { body: Buffer.alloc(8 * 1024 * 1024, 0x20) });
    assert.equal(huge.status, 413);
    // Not TLS at all, then a TLS client that hangs up mid-handshake.
    await new Promise<void>((resolve) => {
      const [host, port] = webhook.address.split(":");
      const raw = connect(Number(port), host, () => raw.end("GET / HTTP/1.1\r\n\r\n"));
      raw.on("close", () => resolve()).on("error", () => resolve());
    });
    await new Promise<void>((resolve) => {
      const [host, port] = webhook.address.split(":");
      const tls = tlsConnect({ host, port: Number(port), rejectUnauthorized: false }, () => tls.destroy());
      tls.on("close", () => resolve()).on("error", () => resolve());
    });
    const still = await admit(admissionReview(osmInjectedPod()));
    assert.equal(still.response.allowed, true);
  });

  test("admin: ready once serving, admissions counted by result", async () => {
    const ready = await fetch(`http://${webhook.adminAddress}/readyz`);
    assert.equal(ready.status, 200);
    const metrics = await (await fetch(`http://${webhook.adminAddress}/metrics`)).text();
    for (const result of ["injected", "skipped", "refused", "bad_request"]) {
      assert.match(
        metrics,
        new RegExp(`osm_cert_webhook_admissions_total\\{result="${result}"\\} [1-9]`),
        result,
      );
    }
    assert.match(metrics, /osm_cert_webhook_serving_cert_expiry_timestamp_seconds \d+/);
  });
});

test("the serving certificate is renewed without a restart: new connections get the new one", async () => {
  const dir = await tempDir();
  const ca = await openTestCa(dir.path);
  const rootPem = ca.trustBundle().roots.join("");
  const log = captureLog("webhook-renewal");
  const stop = new AbortController();
  const webhook = await startWebhookWithCaDir(dir.path, log.logger, stop.signal, {
    agentImage: "x/agent:1",
    flags: ["--serving-cert-validity", "20s"],
    hooks: { renewFraction: 0.05 },
  });
  try {
    const first = (await send(webhook.address, rootPem, { method: "GET", path: "/" })).peer;
    let renewed = first;
    for (let i = 0; i < 50 && renewed.serialNumber === first.serialNumber; i++) {
      await sleep(100);
      renewed = (await send(webhook.address, rootPem, { method: "GET", path: "/" })).peer;
    }
    assert.notEqual(renewed.serialNumber, first.serialNumber, "a new certificate on a new connection");
    assert.ok(Date.parse(renewed.validTo) > Date.parse(first.validTo));
    assert.equal(renewed.subjectAltName, first.subjectAltName);
    assert.notEqual(
      renewed.publicKey.export({ type: "spki", format: "der" }).toString("hex"),
      first.publicKey.export({ type: "spki", format: "der" }).toString("hex"),
      "a new key each time",
    );
    assert.ok(log.lines.some((l) => l.event === "serving_cert.renewed"));
    assert.ok(!JSON.stringify(log.lines).includes("PRIVATE KEY"), "no key material in the logs");
  } finally {
    stop.abort();
    await webhook.close();
    await dir.remove();
  }
});

test("CLI: --help exits 0; bad values exit 2 with one line naming the flag", async () => {
  const help = await runCli(["webhook", "--help"]);
  assert.equal(help.code, 0);
  const bad = await runCli(["webhook", "--agent-image", "x", "--agent-memory-limit", "lots"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /invalid --agent-memory-limit: "lots" is not a Kubernetes quantity/);
  assert.equal(bad.stderr.trim().split("\n").length, 1);
  const missing = await runCli(["webhook"], { OSM_CERT_AGENT_IMAGE: "" });
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--agent-image/);
  const env = await runCli(["webhook", "--ca-dir", "/nonexistent"], {
    OSM_CERT_AGENT_IMAGE: "x/agent:1",
    OSM_CERT_LISTEN: "nowhere",
  });
  assert.equal(env.code, 2);
  assert.match(env.stderr, /invalid --listen/);
});

test("CLI: `osm-cert webhook` runs as a process, serves, and stops cleanly on SIGTERM", async () => {
  const dir = await tempDir();
  const ca = await openTestCa(dir.path);
  const proc = startCli("webhook", [
    "webhook",
    "--ca-dir",
    dir.path,
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    "--agent-image",
    "openservicemesh/osm-cert:0.1.0",
  ]);
  try {
    const started = await proc.waitForEvent("webhook.started");
    const answer = await send(started.address as string, ca.trustBundle().roots.join(""), {
      body: JSON.stringify(admissionReview(osmInjectedPod())),
    });
    assert.equal((JSON.parse(answer.body) as Review).response.patchType, "JSONPatch");
    proc.child.kill("SIGTERM");
    assert.deepEqual(await proc.exited, { code: 0, signal: null });
    assert.ok(proc.lines.some((l) => l.event === "webhook.stopped"));
  } finally {
    proc.child.kill("SIGKILL");
    await dir.remove();
  }
});
