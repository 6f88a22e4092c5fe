// Property tests of the CSR parser (issue 10, Deliver 2a): whatever bytes or text arrive, the
// parser ends with a ParsedCsr or a CsrError — never a TypeError, RangeError, a stray DerError, or
// a hang. x509-fuzz.test.ts already cross-checks accepted CSRs against a full ASN.1 parse; this
// suite adds shrinking counterexamples and the soak-sized run.

import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { generateKeyPair } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { CsrError, createCsr, MAX_CSR_BYTES, parseCsrDer, parseCsrPem } from "../../common/x509/csr.js";
import {
  derBitString,
  derInteger,
  derNull,
  derOid,
  derSequence,
  derSmallInteger,
} from "../../common/x509/der.js";
import { OID } from "../../common/x509/oids.js";
import {
  forbidUnhandledRejections,
  heapUsedMb,
  propertyRuns,
  propertySeed,
  SOAK,
} from "../helpers/property.js";

const RUNS = propertyRuns(400);
/** Parsing is synchronous; one input taking this long means a pathological loop. */
const MAX_PARSE_MS = 250;

forbidUnhandledRejections();

function timedParse(parse: () => unknown): number {
  const started = performance.now();
  try {
    parse();
  } catch (error) {
    if (!(error instanceof CsrError)) throw error;
    assert.match(error.code, /^CSR_/);
  }
  return performance.now() - started;
}

function parsesOrRefuses(parse: () => unknown): void {
  // A slow parse is timed again: a pathological input is slow every time, a GC pause or a busy
  // machine is not.
  if (timedParse(parse) < MAX_PARSE_MS) return;
  const ms = timedParse(parse);
  assert.ok(ms < MAX_PARSE_MS, `one parse took ${ms.toFixed(0)} ms`);
}

/** A few valid CSRs of each key shape, the starting points of the mutations. */
async function validCsrs(): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const algorithm of ["ecdsa-p256", "ecdsa-p384", "rsa-2048"] as const) {
    const { privateKey } = await generateKeyPair(algorithm);
    out.push(
      createCsr({
        privateKey,
        commonName: "bookstore-v2.bookstore.cluster.local",
        dnsNames: ["bookstore-v2.bookstore.cluster.local"],
        uris: ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"],
      }),
    );
  }
  return out;
}

/** Byte-level edits of a valid CSR: flips, overwrites, truncations, insertions, length-byte lies. */
function mutated(seeds: Buffer[]): fc.Arbitrary<Buffer> {
  const edit = fc.oneof(
    fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({
      kind: fc.constant("set" as const),
      at: fc.nat(),
      byte: fc.constantFrom(0, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xff),
    }),
    fc.record({ kind: fc.constant("cut" as const), at: fc.nat() }),
    fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), bytes: fc.uint8Array({ maxLength: 8 }) }),
  );
  return fc
    .tuple(fc.constantFrom(...seeds), fc.array(edit, { minLength: 1, maxLength: 6 }))
    .map(([seed, edits]) => {
      let der = Buffer.from(seed);
      for (const e of edits) {
        const at = der.length === 0 ? 0 : e.at % der.length;
        if (e.kind === "flip") der[at] = (der[at] ?? 0) ^ (1 << e.bit);
        else if (e.kind === "set") der[at] = e.byte;
        else if (e.kind === "cut") der = der.subarray(0, at);
        else der = Buffer.concat([der.subarray(0, at), Buffer.from(e.bytes), der.subarray(at)]);
      }
      return der;
    });
}

test("parseCsrDer: arbitrary bytes end in a CsrError or a result, never anything else", () => {
  const before = SOAK ? heapUsedMb() : 0;
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: MAX_CSR_BYTES + 64 }), (bytes) => {
      parsesOrRefuses(() => parseCsrDer(Buffer.from(bytes)));
    }),
    { numRuns: RUNS, ...propertySeed() },
  );
  if (SOAK)
    console.log(`csr-parser arbitrary bytes: heapUsed ${before} MB -> ${heapUsedMb()} MB over ${RUNS} cases`);
});

test("parseCsrDer: mutated valid CSRs end in a CsrError or a result", async () => {
  const seeds = await validCsrs();
  for (const seed of seeds)
    assert.equal(parseCsrDer(seed).subjectCommonName, "bookstore-v2.bookstore.cluster.local");
  const before = SOAK ? heapUsedMb() : 0;
  fc.assert(
    fc.property(mutated(seeds), (der) => parsesOrRefuses(() => parseCsrDer(der))),
    { numRuns: RUNS, ...propertySeed() },
  );
  if (SOAK)
    console.log(`csr-parser mutated CSRs: heapUsed ${before} MB -> ${heapUsedMb()} MB over ${RUNS} cases`);
});

test("parseCsrPem: random text, PEM-shaped text and mutated PEM end in a CsrError or a result", async () => {
  const seeds = await validCsrs();
  const label = fc.constantFrom(
    "CERTIFICATE REQUEST",
    "NEW CERTIFICATE REQUEST",
    "CERTIFICATE",
    "PRIVATE KEY",
    "",
  );
  const pemShaped = fc
    .tuple(
      label,
      fc.oneof(fc.base64String({ maxLength: 12_000 }), fc.string({ maxLength: 200 })),
      fc.string({ maxLength: 40 }),
      fc.string({ maxLength: 40 }),
    )
    .map(([l, body, pre, post]) => `${pre}-----BEGIN ${l}-----\n${body}\n-----END ${l}-----\n${post}`);
  const mutatedPem = mutated(seeds).map((der) => encodePem("CERTIFICATE REQUEST", der));
  const twoBlocks = fc
    .tuple(fc.constantFrom(...seeds), mutated(seeds))
    .map(([a, b]) => encodePem("CERTIFICATE REQUEST", a) + encodePem("CERTIFICATE REQUEST", b));
  const before = SOAK ? heapUsedMb() : 0;
  fc.assert(
    fc.property(
      fc.oneof(
        fc.string({ maxLength: 400 }),
        fc.string({ unit: "binary", maxLength: 400 }),
        pemShaped,
        mutatedPem,
        twoBlocks,
      ),
      (text) => parsesOrRefuses(() => parseCsrPem(text)),
    ),
    { numRuns: RUNS, ...propertySeed() },
  );
  if (SOAK)
    console.log(`csr-parser PEM text: heapUsed ${before} MB -> ${heapUsedMb()} MB over ${RUNS} cases`);
});

// Found by the 10,000-case run: a mutated RSA CSR whose modulus happened to be prime took 0.5 s to
// refuse (OpenSSL 3 runs ≥ 64 Miller–Rabin rounds on a prime whatever `checks` asks); a prime
// 4096-bit modulus took 5 s of blocked event loop per CSR. Kept as regular cases.
const FOUND_2048 = Buffer.from(
  "MIIC6zCCAdMCAQAwLzEtMCsGA1UEAwwkYm9va3N0b3JlLXYyLmJvb2tzdG9yZS5jbHVzdGVyLmxvY2FsMIIBIjANBgkqhkiG" +
    "9w0BAQEFAAOCAQ8AMIIBCgKCAQEAysk7eCIW8QdtKlAQHvppxkIMaD2+caMhjHtXkLUcx7FtiWNkMf/ITX8Y8tMd1ikeQGgn" +
    "vUqjYyHv5rm53ucg3PKy5qwI2Cjg1/STbbYZseq7YfyjgcLVSLYWiJpiyHSyoX8QlsjNQdv5xG9ohMKzmoO9PI9HocDHsNSP" +
    "eMyyV26SLTv6K1NkMpuT8zZUT97eJZmAmRpeJFKRl+6irYpq1n7rlt5sPY8m3SnOrqrfWi/jB3kBZpGON60vVU8Trsj6XRrD" +
    "HrGT72NCS9aowpzso5uZMaX20aLcg3SFe/qI8ThZaRqYFlfHaaw+gDGyP2cn2+JakDFrY1aFtvEMSx2qewIDAQABoHcwdQYJ" +
    "KoZIhvcNAQkOMWgwZjBkBgNVHREEXTBbgiRib29rc3RvcmUtdjIuYm9va3N0b3JlLmNsdXN0ZXIubG9jYWyGM3NwaWZmZTov" +
    "L2NsdXN0ZXIubG9jYWwvbnMvYm9va3N0b3JlL3NhL2Jvb2tzdG9yZS12MjANBgkqhkiG9w0BAQsFAAOCAQEAvnw00pwFjHWW" +
    "PnYVuPwkK2kg4NaK2bvpTk2ISA4n62AGoFkCUsrwiY7qWD/gmBZUzhJwxYu/iD8Lq0DvBuBnXqrWN821ZQvAVA5ZPbxJ+Qym" +
    "nLG+N/ODOU9tNZPgNMpzAeIspg9oCAnfsB0lUx4OTVcGT+Mcspqm8mzmQxDyo6wzLfdBKdgawTGlsC8Y4XnXkkU079lLklW/" +
    "RcWRvwOeygsFUjNWudq6Z+oW/4Cs/jGPfztWfBvafXuaped4rjZ+78epbNhfxvU3jhk1JZJlFFsT63keou7bEICKA6t0n+ht" +
    "kw8QbaJFH9Rf18Q75GCwFoB+xaeOQ7RjSyTDEkN/ag==",
  "base64",
);
const PRIME_4096 = BigInt(
  "0x" +
    "f2619b9bb9e36269310d8921a9639eda0c58d63f3b15acd0a9a25a590f5c3c23ea0bb960227cc9789e8d0d22d82dc4cf" +
    "dbc0a854061d58a3b5ba378da21e7cf4481407d2c5a5ed11f569f076c56e6af78c28d4c47508ce912e5db0eff3ffbc38" +
    "a6b0f8d9a5230b9d4816247efec253c78ccb0dc789a1c47a41836d8ac8c91c6bbbc3361817d5f1afee287c0e3a88677a" +
    "80af9c2832df8e2012884c573bd7c8fde1ac558ee82c1c229a7d78c4eedcaddb66bdb9544d3a2ab15f1cb5fffa2fc83f" +
    "83ec40a82c4b64dc91ed29905d2b1ce854e30edb2489168870f22354bf25192f563077059aeefed39c72a5fce0976994" +
    "9f73643127ae485c5210ec93f9e48c7a19a0494c378970151c864393a9ca02ac455822b7d7bcbf42b141785692474e1a" +
    "a578ced07a4130a6577d9ccd23a784d3dd165a64c116cded39ba0c30f1aa3e14693afb8b0653543b6fb46203b3574283" +
    "e9994ceec8d901950779152f5c4f14ec86822307572b669e97012526753bab23fd9c9f7b4529d3db084424d089a1610f" +
    "23b55c0df207670aa8228f400045be30f43a0f3590e782c51c7cdb5716c89aecf203535264cbec02bd25447b050e5e99" +
    "d02b09c13efaa72072a984b034b6767fbe33bec79013b527dc47b9fc52e66a85817ab6e42e10a296179633e9ad985e6a" +
    "c51fcc6b0a555ba7bb405d26bb5832c3359e663c7ef7ce145a4de78278bea08f",
);

test("a prime RSA modulus is refused as weak in milliseconds, not seconds", () => {
  const csrWithModulus = (modulus: bigint): Buffer => {
    const spki = derSequence(
      derSequence(derOid(OID.rsaEncryption), derNull()),
      derBitString(derSequence(derInteger(Buffer.from(modulus.toString(16), "hex")), derSmallInteger(65537))),
    );
    const info = derSequence(derSmallInteger(0), derSequence(), spki, Buffer.from([0xa0, 0x00]));
    return derSequence(
      info,
      derSequence(derOid(OID.sha256WithRsaEncryption), derNull()),
      derBitString(Buffer.alloc(512, 1)),
    );
  };
  for (const der of [FOUND_2048, csrWithModulus(PRIME_4096)]) {
    const started = performance.now();
    assert.throws(
      () => parseCsrDer(der),
      (e: unknown) =>
        e instanceof CsrError && e.code === "CSR_WEAK_KEY" && /modulus is prime/.test(e.message),
    );
    const ms = performance.now() - started;
    assert.ok(ms < 500, `refused after ${Math.round(ms)} ms`);
  }
});
