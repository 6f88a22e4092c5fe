// Figure 1's second reference (issue 12): what one core does without any transport, so the README
// can say which cost stands between the server and the openssl floor. Run by bench/server-figures.ts
// as `node dist/bench/signing-core.js <ca-dir> <seconds>`, pinned to the server's CPU; prints one
// JSON line, rates per CPU-second of this process:
//
//   crypto  Node's crypto per CSR, nothing else: the CSR's public key imported (from a JWK, the
//           server's path: common/x509/csr.ts), its signature verified, one ECDSA signature made
//           with the CA's key. `openssl speed` does the same verify + sign without the import and
//           without Node's per-call context setup.
//   core    the server's own signing path per CSR, in process: the CSR parsed and verified
//           (parseCsrPem), the policy (decideServiceCertificate), the certificate built and signed by
//           Tresor (issue). Everything CreateCertificate does except gRPC, HTTP/2, TLS and the audit line.

import { createPublicKey, type KeyObject, sign, verify } from "node:crypto";
import { makeIdentity, serviceCommonName, spiffeId } from "../common/identity.js";
import { generateKeyPair } from "../common/keys.js";
import { encodePem } from "../common/pem.js";
import { createCsr, parseCsrPem } from "../common/x509/csr.js";
import { decideServiceCertificate } from "../server/policy.js";
import { openTestCa } from "../test/helpers/pki.js";

const [caDir, secondsText] = process.argv.slice(2);
if (caDir === undefined) throw new Error("usage: signing-core.js <ca-dir> [seconds]");
const seconds = Number(secondsText ?? "3");

const identity = makeIdentity("bench", "bench");
const CN = serviceCommonName(identity, "cluster.local");
const SPIFFE = spiffeId(identity, "cluster.local");
const KEYS = 64;
const CSRS = 512;

const ca = await openTestCa(caDir);
const keys: KeyObject[] = [];
for (let i = 0; i < KEYS; i++) keys.push((await generateKeyPair("ecdsa-p256")).privateKey);
const csrs = Array.from({ length: CSRS }, (_, i) =>
  encodePem(
    "CERTIFICATE REQUEST",
    createCsr({ privateKey: keys[i % KEYS] as KeyObject, commonName: CN, dnsNames: [CN], uris: [SPIFFE] }),
  ),
);
const limits = {
  trustDomain: "cluster.local",
  maxValidityMs: 86_400_000,
  minValidityMs: 600_000,
  reservedDnsNames: new Set<string>(),
};

// The crypto loop's inputs: each key's JWK and a signature over a CSR-sized message; a
// certificate-sized message for the CA's signature.
const message = Buffer.alloc(330, 7);
const signed = keys.map((key) => ({
  jwk: createPublicKey(key).export({ format: "jwk" }),
  signature: sign("sha256", message, key),
}));
const caKey = (await generateKeyPair("ecdsa-p256")).privateKey;
const tbs = Buffer.alloc(420, 9);

/** Runs `step(i)` for `seconds` of wall time after a warm-up; returns steps per CPU-second. */
async function rate(step: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < 300; i++) await step(i);
  const cpu0 = process.cpuUsage();
  const until = performance.now() + seconds * 1000;
  let n = 0;
  while (performance.now() < until) {
    for (let k = 0; k < 50; k++, n++) await step(n);
  }
  const cpu = process.cpuUsage(cpu0);
  return n / ((cpu.user + cpu.system) / 1e6);
}

const crypto = await rate((i) => {
  const s = signed[i % KEYS] as (typeof signed)[number];
  const key = createPublicKey({ key: s.jwk, format: "jwk" });
  if (!verify("sha256", message, key, s.signature)) throw new Error("signature did not verify");
  return sign("sha256", tbs, caKey);
});
const core = await rate(async (i) => {
  const csrPem = csrs[i % CSRS] as string;
  const csr = parseCsrPem(csrPem);
  const decision = decideServiceCertificate(identity, csr, 0, limits);
  if (!decision.ok) throw new Error(decision.message);
  return ca.issue({
    signal: new AbortController().signal,
    csrPem,
    csr,
    profile: "service",
    commonName: decision.commonName,
    dnsNames: decision.dnsNames,
    uris: decision.uris,
    ipAddresses: [],
    validityMs: decision.validityMs,
  });
});
console.log(JSON.stringify({ event: "signing-core", crypto, core }));
