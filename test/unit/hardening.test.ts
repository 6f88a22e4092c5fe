// Issue 11's process-level defences that need no server: the agent's trust in what the signing
// server returns, key generation that cannot deadlock, and liveness that notices a stalled loop.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { sign, X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { AdminServer } from "../../common/admin-http.js";
import { generateKeyPair } from "../../common/keys.js";
import { MetricsRegistry } from "../../common/metrics.js";
import { encodePem } from "../../common/pem.js";
import { encodeName } from "../../common/x509/certificate.js";
import { createCsr } from "../../common/x509/csr.js";
import {
  derBitString,
  derImplicitContext,
  derNull,
  derOid,
  derSequence,
  derSmallInteger,
} from "../../common/x509/der.js";
import { OID } from "../../common/x509/oids.js";
import type { CreateCertificateResponse } from "../../proto/signing-api.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { captureLog } from "../helpers/log-capture.js";
import { openTestCa, tempDir } from "../helpers/pki.js";
import { testRotator } from "../helpers/rotator.js";
import { bookstoreLeafResponse } from "../helpers/signing-client.js";

const CN = "bookstore-v2.bookstore.cluster.local";
const dirs: Awaited<ReturnType<typeof tempDir>>[] = [];
after(async () => {
  for (const dir of dirs) await dir.remove();
});

async function newCa(): Promise<TresorProvider> {
  const dir = await tempDir();
  dirs.push(dir);
  return openTestCa(join(dir.path, "ca"));
}

/** A signer that answers with a leaf from `ca` and the bundle `bundle`, as a (rogue) server could. */
function signerFrom(ca: TresorProvider, bundle: readonly string[]) {
  return {
    async createCertificate(csrPem: string, validityMs: number): Promise<CreateCertificateResponse> {
      return bookstoreLeafResponse(ca, csrPem, validityMs, bundle);
    },
  };
}

function rotatorWith(mesh: TresorProvider, signer: ReturnType<typeof signerFrom>) {
  return testRotator({ roots: mesh.trustBundle().roots.join(""), signer, logger: captureLog().logger });
}

test("finding 1: a leaf chained to a root carried only in the same answer is refused, and that root is not adopted", async () => {
  const mesh = await newCa();
  const attacker = await newCa();
  const { rotator, cache } = rotatorWith(mesh, signerFrom(attacker, attacker.trustBundle().roots));
  const before = cache.snapshot().trustBundlePem;
  await assert.rejects(rotator.rotateNow(), /does not chain to the mesh roots this agent holds/);
  assert.equal(cache.snapshot().trustBundlePem, before, "trust unchanged");
  assert.equal(cache.validCertificate(), null, "nothing served");
});

test("an answer from the mesh CA is served, and its bundle (old + new root) adopted after the check", async () => {
  const mesh = await newCa();
  const next = await newCa();
  const bundle = [...mesh.trustBundle().roots, ...next.trustBundle().roots];
  const { rotator, cache } = rotatorWith(mesh, signerFrom(mesh, bundle));
  const cert = await rotator.rotateNow();
  assert.equal(cache.validCertificate(), cert);
  assert.equal(cache.snapshot().trustBundlePem, bundle.join(""));
});

test("key generation cannot deadlock: the real start-up paths looped in a child process finish", async () => {
  // On Node 20.20, generateKeyPairSync followed by reading asymmetricKeyDetails hung the main
  // thread within seconds; these are the paths that used to do it (root creation, the server's
  // serving certificate, `osm-cert issue`, CSR signing).
  const script = `
    const { generateRoot } = await import(${JSON.stringify(new URL("../../server/providers/tresor/ca-material.js", import.meta.url).href)});
    const { loadCa } = await import(${JSON.stringify(new URL("../../server/providers/tresor/ca-material.js", import.meta.url).href)});
    const { generateKeyPair } = await import(${JSON.stringify(new URL("../../common/keys.js", import.meta.url).href)});
    const { createCsr, parseCsrDer } = await import(${JSON.stringify(new URL("../../common/x509/csr.js", import.meta.url).href)});
    const { signerFor } = await import(${JSON.stringify(new URL("../../common/x509/certificate.js", import.meta.url).href)});
    for (let i = 0; i < 300; i++) {
      const root = await generateRoot({ keyAlgorithm: "ecdsa-p256", commonName: "r", validityMs: 3600000 });
      loadCa(root, "loop");
    }
    for (let i = 0; i < 3000; i++) {
      const { privateKey } = await generateKeyPair("ecdsa-p256");
      signerFor(privateKey);
      parseCsrDer(createCsr({ privateKey, commonName: "x" }));
    }
    process.stdout.write("done");
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d));
  child.stderr.on("data", (d: Buffer) => (err += d));
  const finished = await Promise.race([
    new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code))),
    sleep(90_000).then(() => "hung" as const),
  ]);
  if (finished === "hung") child.kill("SIGKILL");
  assert.equal(finished, 0, `child ${finished === "hung" ? "hung" : `exited ${finished}`}: ${err}`);
  assert.equal(out, "done");
});

test("/healthz fails after the event loop stalled, while readiness is judged apart", async () => {
  const admin = new AdminServer({
    metrics: new MetricsRegistry(),
    notReadyReason: () => null,
    stallThresholdMs: 300,
  });
  const { port } = await admin.listen({ host: "127.0.0.1", port: 0 });
  try {
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
    const until = Date.now() + 1_200;
    while (Date.now() < until) {
      // A stuck loop, as a runaway computation or a deadlocked native call makes it.
    }
    await sleep(700);
    const response = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(response.status, 503);
    assert.match(await response.text(), /event loop stalled for \d+\.\d s/);
    assert.equal(
      (await fetch(`http://127.0.0.1:${port}/readyz`)).status,
      200,
      "readiness is a separate question",
    );
  } finally {
    await admin.close();
  }
});

test("finding 6: certificates issued for every accepted key shape parse in Go's crypto/x509, OpenSSL and Node", async () => {
  const ca = await newCa();
  const dir = await tempDir();
  dirs.push(dir);
  const { privateKey: rsa, publicKey: rsaPublic } = await generateKeyPair("rsa-2048");
  const { privateKey: p384 } = await generateKeyPair("ecdsa-p384");
  const { privateKey: p256 } = await generateKeyPair("ecdsa-p256");
  // An RSA CSR whose key carries no NULL parameters (as some clients send it): certified as sent,
  // Go refused the certificate.
  const rsaSpki = rsaPublic.export({ type: "pkcs1", format: "der" });
  const noNullSpki = derSequence(derSequence(derOid(OID.rsaEncryption)), derBitString(rsaSpki));
  const info = derSequence(
    derSmallInteger(0),
    encodeName({ commonName: CN }),
    noNullSpki,
    derImplicitContext(0),
  );
  const rsaNoNull = derSequence(
    info,
    derSequence(derOid(OID.sha256WithRsaEncryption), derNull()),
    derBitString(sign("sha256", info, rsa)),
  );
  const csrs = {
    "rsa-no-null": encodePem("CERTIFICATE REQUEST", rsaNoNull),
    p384: encodePem("CERTIFICATE REQUEST", createCsr({ privateKey: p384, commonName: CN })),
    p256: encodePem("CERTIFICATE REQUEST", createCsr({ privateKey: p256, commonName: CN })),
  };
  const files: string[] = [];
  for (const [name, csrPem] of Object.entries(csrs)) {
    const issued = await signerFrom(ca, []).createCertificate(csrPem, 3_600_000);
    const file = join(dir.path, `${name}.pem`);
    await writeFile(file, issued.certificate_chain.join(""));
    files.push(file);
    execFileSync("openssl", ["x509", "-in", file, "-noout"], { stdio: "ignore" });
    assert.match(new X509Certificate(issued.certificate_chain.join("")).subjectAltName ?? "", /URI:spiffe/);
  }
  const goProgram = fileURLToPath(new URL("../../../test/go/parse-certificates.go", import.meta.url));
  const out = execFileSync("go", ["run", goProgram, ...files], {
    encoding: "utf8",
    env: { ...process.env, GO111MODULE: "off", GOCACHE: join(tmpdir(), "osm-cert-go-cache"), GOFLAGS: "" },
  });
  assert.equal(
    out
      .trim()
      .split("\n")
      .filter((line) => line.startsWith("ok ")).length,
    3,
    out,
  );
});
