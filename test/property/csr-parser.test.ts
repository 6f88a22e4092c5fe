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
