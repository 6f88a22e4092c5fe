// The signing API's contract over real gRPC+TLS, including every bad input of issue #2.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseFlags } from "../../common/flags.js";
import { makeIdentity, serviceCommonName, spiffeId } from "../../common/identity.js";
import { generateKeyPair } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { createCsr } from "../../common/x509/csr.js";
import { SERVER_FLAGS } from "../../server/flags.js";
import { type RunningServer, startServer } from "../../server/main.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { captureLog } from "../helpers/log-capture.js";
import {
  bootstrapCert,
  expiredBootstrapCert,
  issueWithCa,
  type KeyedCert,
  openTestCa,
  tempDir,
} from "../helpers/pki.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";

const TRUST_DOMAIN = "cluster.local";
const bookstore = makeIdentity("bookstore-v2", "bookstore");
const CN = serviceCommonName(bookstore, TRUST_DOMAIN);
const SPIFFE = spiffeId(bookstore, TRUST_DOMAIN);

async function csrFor(names: { cn?: string; dns?: string[]; uris?: string[] } = {}): Promise<string> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const der = createCsr({
    privateKey,
    commonName: names.cn ?? CN,
    dnsNames: names.dns ?? [CN],
    uris: names.uris ?? [SPIFFE],
  });
  return encodePem("CERTIFICATE REQUEST", der);
}

function opensslCsr(dir: string, name: string, keyArgs: string[], extra: string[] = []): string {
  const key = join(dir, `${name}.key`);
  execFileSync("openssl", ["genpkey", ...keyArgs, "-out", key], { stdio: "ignore" });
  return execFileSync("openssl", ["req", "-new", "-key", key, "-subj", `/CN=${CN}`, ...extra], {
    encoding: "utf8",
  });
}

describe("signing API", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: RunningServer;
  let ca: TresorProvider;
  let root: string;
  let bootstrap: KeyedCert;
  let client: TestSigningClient;
  const log = captureLog("server");

  before(async () => {
    dir = await tempDir();
    const caDir = join(dir.path, "ca");
    ca = await openTestCa(caDir);
    root = ca.trustBundle().roots.join("");
    bootstrap = await bootstrapCert(ca, bookstore);
    const flags = parseFlags(
      "server",
      SERVER_FLAGS,
      [
        "--ca-dir",
        caDir,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--service-cert-validity-duration",
        "1h",
      ],
      {},
    );
    server = await startServer(flags, log.logger);
    client = new TestSigningClient(server.address, root, bootstrap);
  });

  after(async () => {
    client.close();
    await server.close();
    await dir.remove();
  });

  test("signs the caller's own identity: CN, DNS and SPIFFE SANs, usages, chain to the root", async () => {
    const response = await client.create(await csrFor(), 600_000);
    const leaf = new X509Certificate(response.certificate_chain[0] as string);
    assert.equal(leaf.subject, `CN=${CN}`);
    assert.equal(leaf.subjectAltName, `DNS:${CN}, URI:${SPIFFE}`);
    assert.deepEqual(leaf.keyUsage?.sort(), ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    assert.equal(leaf.ca, false);
    const rootCert = new X509Certificate(root);
    assert.ok(leaf.checkIssued(rootCert) && leaf.verify(rootCert.publicKey));
    assert.equal(response.serial_number, leaf.serialNumber);
    assert.deepEqual(response.trust_bundle?.root_certificates, [root]);
    assert.equal(response.validity_clamped, false);
    const lifetime = Date.parse(leaf.validTo) - Date.now();
    assert.ok(lifetime > 590_000 && lifetime <= 600_000, `lifetime ${lifetime}`);
    const audit = log.lines.find((l) => l.event === "certificate.issued" && l.serial === leaf.serialNumber);
    assert.ok(audit, "one audit line per issuance");
    assert.equal(audit.identity, "bookstore-v2.bookstore");
    assert.equal(audit.provider, "tresor");
    assert.equal(audit.authn, "bootstrap-cert");
    assert.ok(!JSON.stringify(log.lines).includes("PRIVATE KEY"), "no key material in logs");
  });

  test("a renewing agent may authenticate with its current service cert", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const csr = encodePem(
      "CERTIFICATE REQUEST",
      createCsr({ privateKey, commonName: CN, dnsNames: [CN], uris: [SPIFFE] }),
    );
    const first = await client.create(csr);
    const { privateKeyToPem } = await import("../../common/keys.js");
    const renewing = new TestSigningClient(server.address, root, {
      certPem: first.certificate_chain.join(""),
      keyPem: privateKeyToPem(privateKey),
    });
    try {
      const second = await renewing.create(await csrFor());
      assert.notEqual(second.serial_number, first.serial_number);
      const audit = log.lines.find((l) => l.serial === second.serial_number);
      assert.equal(audit?.authn, "service-cert");
    } finally {
      renewing.close();
    }
  });

  test("requested validity above the maximum is clamped and says so", async () => {
    const response = await client.create(await csrFor(), 48 * 3_600_000);
    assert.equal(response.validity_clamped, true);
    const leaf = new X509Certificate(response.certificate_chain[0] as string);
    assert.ok(Date.parse(leaf.validTo) <= Date.now() + 3_600_000, "never longer than the maximum");
    const audit = log.lines.find((l) => l.serial === response.serial_number);
    assert.equal(audit?.validityClamped, true);
  });

  test("bad CSRs: INVALID_ARGUMENT naming the problem", async () => {
    const good = await csrFor();
    const der = Buffer.from(good.replace(/-----[^-]+-----/g, "").replace(/\s/g, ""), "base64");
    const badSig = Buffer.from(der);
    badSig[badSig.length - 5] = (badSig[badSig.length - 5] as number) ^ 0xff;
    const cases: [string, string, RegExp][] = [
      ["not PEM", "hello world", /not PEM/i],
      ["a certificate, not a CSR", root, /CERTIFICATE REQUEST/],
      ["bad signature", encodePem("CERTIFICATE REQUEST", badSig), /signature/i],
      ["truncated", encodePem("CERTIFICATE REQUEST", der.subarray(0, der.length - 10)), /./],
    ];
    for (const [name, csr, pattern] of cases) {
      const result = await statusOf(client.create(csr));
      assert.equal(result.status, "INVALID_ARGUMENT", name);
      assert.match(result.details, pattern, name);
    }
  });

  test("weak and unsupported keys: INVALID_ARGUMENT", async () => {
    const cases: [string, string[], RegExp][] = [
      ["RSA 1024", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"], /1024/],
      ["P-224", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-224"], /./],
      ["Ed25519", ["-algorithm", "ED25519"], /./],
    ];
    for (const [name, keyArgs, pattern] of cases) {
      const csr = opensslCsr(dir.path, name.replace(/\W/g, ""), keyArgs);
      const result = await statusOf(client.create(csr));
      assert.equal(result.status, "INVALID_ARGUMENT", `${name}: ${result.details}`);
      assert.match(result.details, pattern, name);
    }
    const rsa = opensslCsr(
      dir.path,
      "rsa2048",
      ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
      ["-addext", `subjectAltName=DNS:${CN},URI:${SPIFFE}`],
    );
    assert.equal((await statusOf(client.create(rsa))).status, "OK", "RSA 2048 is accepted");
  });

  test("oversized CSR and oversized messages: RESOURCE_EXHAUSTED, server unaffected", async () => {
    const padding = `${"A".repeat(64)}\n`.repeat(130);
    const huge = (await csrFor()).replace("-----END", `${padding}-----END`);
    assert.equal((await statusOf(client.create(huge))).status, "RESOURCE_EXHAUSTED");
    const message = await statusOf(client.create("x".repeat(64 * 1024)));
    assert.equal(message.status, "RESOURCE_EXHAUSTED");
    assert.equal((await statusOf(client.create(await csrFor()))).status, "OK");
  });

  test("another identity or CA:true: PERMISSION_DENIED, logged with both identities", async () => {
    const cases: [string, string][] = [
      ["CN", await csrFor({ cn: "bookbuyer.bookbuyer.cluster.local", dns: [], uris: [] })],
      ["DNS SAN", await csrFor({ dns: ["bookbuyer.bookbuyer.cluster.local"] })],
      ["URI SAN", await csrFor({ uris: ["spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer"] })],
    ];
    for (const [name, csr] of cases) {
      const result = await statusOf(client.create(csr));
      assert.equal(result.status, "PERMISSION_DENIED", name);
      assert.match(result.details, /bookbuyer/, name);
      assert.match(result.details, /bookstore-v2\.bookstore/, name);
    }
    const caCsr = opensslCsr(
      dir.path,
      "ca",
      ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
      ["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    const ca = await statusOf(client.create(caCsr));
    assert.equal(ca.status, "PERMISSION_DENIED");
    assert.match(ca.details, /CA:true/);
    const denied = log.lines.filter((l) => l.event === "certificate.denied");
    assert.ok(denied.length >= 4);
    assert.ok(denied.every((l) => l.caller === "bookstore-v2.bookstore"));
    assert.ok(denied.some((l) => l.csrCommonName === "bookbuyer.bookbuyer.cluster.local"));
  });

  test("no client cert, a foreign CA's cert, an expired cert, a server-only cert: UNAUTHENTICATED", async () => {
    const foreignDir = await tempDir();
    try {
      const foreign = await openTestCa(foreignDir.path);
      const credentials: [string, KeyedCert | undefined][] = [
        ["none", undefined],
        ["foreign CA", await bootstrapCert(foreign, bookstore)],
        ["expired", await expiredBootstrapCert(ca, bookstore)],
        [
          "webhook (serverAuth only)",
          await issueWithCa(ca, "webhook", { commonName: "osm-controller.osm-system.svc" }),
        ],
      ];
      for (const [name, cert] of credentials) {
        const other = new TestSigningClient(server.address, root, cert);
        try {
          const result = await statusOf(other.create(await csrFor()));
          assert.equal(result.status, "UNAUTHENTICATED", `${name}: ${result.details}`);
        } finally {
          other.close();
        }
      }
    } finally {
      await foreignDir.remove();
    }
    assert.equal((await statusOf(client.create(await csrFor()))).status, "OK", "the server keeps serving");
  });

  test("WatchTrustBundle sends the bundle now", async () => {
    const bundle = await client.firstBundle();
    assert.deepEqual(bundle.root_certificates, [root]);
    assert.equal(bundle.trust_domain, TRUST_DOMAIN);
    assert.match(bundle.version, /^[0-9a-f]{16}$/);
  });

  test("admin endpoint: issuance metrics by provider and code, readiness, health", async () => {
    const metrics = await (await fetch(`http://${server.adminAddress}/metrics`)).text();
    assert.match(metrics, /osm_cert_server_issuance_total\{code="OK",provider="tresor"\} \d+/);
    assert.match(metrics, /osm_cert_server_issuance_total\{code="PERMISSION_DENIED",provider="tresor"\} \d+/);
    assert.equal((await fetch(`http://${server.adminAddress}/readyz`)).status, 200);
    assert.equal((await fetch(`http://${server.adminAddress}/healthz`)).status, 200);
  });
});
