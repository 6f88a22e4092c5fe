// Bounded, deterministic fuzzing of the hand-written CSR parser (DESIGN.md §12: "a fast path must
// stay small, fuzzed, and cross-checked against a full ASN.1 parse"). Two invariants:
//   1. parseCsrDer only ever throws CsrError — never a TypeError, RangeError or a stray DerError;
//   2. whatever it accepts, @peculiar/x509's schema parser also parses, to the same CN, SANs,
//      CA request and public key bytes.
// Mutating a signed CSR almost always just breaks the signature, so the second campaign mutates
// the CertificationRequestInfo and re-signs it: that is what drives input deep into the parser
// and makes "accepted" happen often enough to compare.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPublicKey, type KeyObject, sign } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import type { CertificationRequest } from "@peculiar/asn1-csr";
import { AsnConvert } from "@peculiar/asn1-schema";
import { BasicConstraints, Extensions, GeneralNames } from "@peculiar/asn1-x509";
import { generateKeyPair, privateKeyToPem } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { encodeName, ext } from "../../common/x509/certificate.js";
import { CsrError, createCsr, type ParsedCsr, parseCsrDer, parseCsrPem } from "../../common/x509/csr.js";
import {
  DerReader,
  derBitString,
  derExplicit,
  derImplicitContext,
  derOctetString,
  derOid,
  derPrintableString,
  derSequence,
  derSet,
  derSmallInteger,
  derUtf8String,
  encodingOf,
  readTlv,
} from "../../common/x509/der.js";
import { OID } from "../../common/x509/oids.js";
import { x509 } from "../helpers/peculiar.js";

// Deterministic by default; OSM_CERT_FUZZ_SEED and OSM_CERT_FUZZ_SCALE explore further by hand.
const SEED_OFFSET = Number(process.env.OSM_CERT_FUZZ_SEED ?? 0);
const SCALE = Number(process.env.OSM_CERT_FUZZ_SCALE ?? 1);

/** mulberry32: small, fast and deterministic, so a failure reproduces from its seed and iteration. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Seed {
  readonly name: string;
  readonly der: Buffer;
  readonly info: Buffer;
  readonly algorithm: Buffer;
  readonly hash: string;
  readonly key: KeyObject;
}

function splitCsr(der: Buffer): { info: Buffer; algorithm: Buffer } {
  const top = new DerReader(der);
  const csr = top.enter(top.read("csr"));
  return { info: encodingOf(der, csr.read("info")), algorithm: encodingOf(der, csr.read("algorithm")) };
}

function resign(seed: Seed, info: Buffer): Buffer {
  return derSequence(info, seed.algorithm, derBitString(sign(seed.hash, info, seed.key)));
}

/** Offsets of every TLV header in a valid structure — where length and tag tweaks bite hardest. */
function headerOffsets(der: Buffer): number[] {
  const out: number[] = [];
  const walk = (start: number, end: number, depth: number): void => {
    let pos = start;
    while (pos < end) {
      const tlv = readTlv(der, pos, end);
      out.push(pos);
      const constructed = (tlv.tag & 0x20) !== 0;
      // OCTET STRING and BIT STRING often wrap DER too (extension values, RSA keys).
      const wrapped = tlv.tag === 0x04 ? tlv.start : tlv.tag === 0x03 ? tlv.start + 1 : -1;
      if (depth < 12 && constructed) walk(tlv.start, tlv.end, depth + 1);
      else if (
        depth < 12 &&
        wrapped >= 0 &&
        wrapped < tlv.end &&
        [0x30, 0x31].includes(der[wrapped] as number)
      ) {
        try {
          walk(wrapped, tlv.end, depth + 1);
        } catch {
          // Not DER after all (an EC point that happens to start with 0x30); nothing to walk.
        }
      }
      pos = tlv.end;
    }
  };
  walk(0, der.length, 0);
  return out;
}

const INTERESTING = [
  0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x1e, 0x30, 0x31, 0x7f, 0x80, 0x81, 0x82, 0x83, 0xa0,
  0xff,
];

function mutate(input: Buffer, headers: readonly number[], random: () => number): Buffer {
  const pick = (n: number): number => Math.floor(random() * n);
  const buf = Buffer.from(input);
  const at = pick(buf.length);
  switch (pick(9)) {
    case 0: {
      const flips = 1 + pick(4);
      for (let i = 0; i < flips; i++) {
        const p = pick(buf.length);
        buf[p] = (buf[p] as number) ^ (1 << pick(8));
      }
      return buf;
    }
    case 1:
      return buf.subarray(0, pick(buf.length));
    case 2:
      return Buffer.concat([buf.subarray(0, at), Buffer.from([pick(256)]), buf.subarray(at)]);
    case 3:
      return Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + pick(3))]);
    case 4:
      buf[at] = INTERESTING[pick(INTERESTING.length)] as number;
      return buf;
    case 5: {
      // Nudge a length octet up or down.
      const h = headers[pick(headers.length)] as number;
      const l = h + 1;
      if (l < buf.length) buf[l] = ((buf[l] as number) + (random() < 0.5 ? 1 : 255)) & 0xff;
      return buf;
    }
    case 6: {
      // Re-encode a length in a non-minimal long form, or as indefinite.
      const h = headers[pick(headers.length)] as number;
      const first = buf[h + 1] as number;
      if (first >= 0x80) return buf;
      const form = random() < 0.5 ? [0x81, first] : [0x80];
      return Buffer.concat([buf.subarray(0, h + 1), Buffer.from(form), buf.subarray(h + 2)]);
    }
    case 7: {
      // Duplicate a whole TLV in place (repeated extensions, attributes, RDNs, names).
      const h = headers[pick(headers.length)] as number;
      try {
        const tlv = readTlv(buf, h);
        const whole = buf.subarray(h, tlv.end);
        return Buffer.concat([buf.subarray(0, tlv.end), whole, buf.subarray(tlv.end)]);
      } catch {
        return buf;
      }
    }
    default: {
      // Swap a tag for another that appears in CSRs.
      const h = headers[pick(headers.length)] as number;
      buf[h] = INTERESTING[pick(INTERESTING.length)] as number;
      return buf;
    }
  }
}

/** @peculiar/x509's reading of the fields we compare; any throw here while we accepted is a finding. */
function peculiarFields(der: Buffer) {
  const csr = new x509.Pkcs10CertificateRequest(der);
  // The schema object is protected in the typings; it is the full ASN.1 parse we compare against.
  const asn = (csr as unknown as { asn: CertificationRequest }).asn;
  const out = {
    cns: csr.subjectName.getField("CN"),
    spki: Buffer.from(csr.publicKey.rawData),
    dnsNames: [] as string[],
    uris: [] as string[],
    ipAddresses: [] as string[],
    emailAddresses: [] as string[],
    otherSanCount: 0,
    requestsCa: false,
  };
  // Only the two extensions we interpret are read, at @peculiar's schema level: @peculiar/x509's
  // classes eagerly interpret every known extension (which our parser deliberately leaves opaque)
  // and silently drop GeneralNames they cannot display (otherNames of unknown type).
  for (const attribute of asn.certificationRequestInfo.attributes ?? []) {
    if (attribute.type !== OID.extensionRequest) continue;
    for (const extension of AsnConvert.parse(attribute.values[0] as ArrayBuffer, Extensions)) {
      if (extension.extnID === OID.subjectAltName) {
        for (const name of AsnConvert.parse(extension.extnValue, GeneralNames)) {
          if (name.dNSName !== undefined) out.dnsNames.push(name.dNSName);
          else if (name.uniformResourceIdentifier !== undefined)
            out.uris.push(name.uniformResourceIdentifier);
          else if (name.iPAddress !== undefined) out.ipAddresses.push(name.iPAddress);
          else if (name.rfc822Name !== undefined) out.emailAddresses.push(name.rfc822Name);
          else out.otherSanCount++;
        }
      } else if (extension.extnID === OID.basicConstraints) {
        out.requestsCa = AsnConvert.parse(extension.extnValue, BasicConstraints).cA;
      }
    }
  }
  return out;
}

function compareWithPeculiar(parsed: ParsedCsr, der: Buffer, where: string): void {
  let theirs: ReturnType<typeof peculiarFields>;
  try {
    theirs = peculiarFields(der);
  } catch (e) {
    assert.fail(
      `${where}: we accepted a CSR @peculiar/x509 cannot parse (${String(e)}): ${der.toString("hex")}`,
    );
  }
  // The input goes into every message: it is the whole reproducer.
  const why = `${where} (${der.toString("hex")})`;
  assert.ok(theirs.cns.length <= 1, `${why}: accepted ${theirs.cns.length} CNs`);
  assert.equal(parsed.subjectCommonName, theirs.cns[0] ?? null, why);
  assert.deepEqual(parsed.publicKey.spki, theirs.spki, why);
  assert.deepEqual(parsed.dnsNames, theirs.dnsNames, why);
  assert.deepEqual(parsed.uris, theirs.uris, why);
  assert.deepEqual(parsed.ipAddresses, theirs.ipAddresses, why);
  assert.deepEqual(parsed.emailAddresses, theirs.emailAddresses, why);
  assert.equal(parsed.otherSanCount, theirs.otherSanCount, why);
  assert.equal(parsed.requestsCa, theirs.requestsCa, why);
}

type Outcome = "accepted" | string;

function attempt(der: Buffer, where: string, tally: Map<Outcome, number>): void {
  let parsed: ParsedCsr;
  try {
    parsed = parseCsrDer(der);
  } catch (e) {
    if (!(e instanceof CsrError)) {
      const kind = e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e);
      assert.fail(`${where}: parseCsrDer threw ${kind} (not a CsrError) for ${der.toString("hex")}`);
    }
    tally.set(e.code, (tally.get(e.code) ?? 0) + 1);
    return;
  }
  tally.set("accepted", (tally.get("accepted") ?? 0) + 1);
  compareWithPeculiar(parsed, der, where);
}

// ---------------------------------------------------------------------------------------------
// Seeds: our own writer's output, a feature-rich hand-built request, and one from OpenSSL.

const dir = mkdtempSync(join(tmpdir(), "osm-cert-x509-fuzz-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function seedFrom(name: string, der: Buffer, key: KeyObject, hash: string): Seed {
  const { info, algorithm } = splitCsr(der);
  parseCsrDer(der); // every seed starts out valid
  return { name, der, info, algorithm, hash, key };
}

async function makeSeeds(): Promise<Seed[]> {
  const p256 = (await generateKeyPair("ecdsa-p256")).privateKey;
  const rsa = (await generateKeyPair("rsa-2048")).privateKey;
  const cn = "bookstore-v2.bookstore.cluster.local";
  const spiffe = "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2";
  const ours = createCsr({ privateKey: p256, commonName: cn, dnsNames: [cn], uris: [spiffe] });
  const oursRsa = createCsr({ privateKey: rsa, commonName: cn, uris: [spiffe] });

  const subject = derSequence(
    derSet(derSequence(derOid(OID.organizationName), derPrintableString("Example Org"))),
    derSet(
      derSequence(derOid("2.5.4.11"), derUtf8String("mesh ünits")),
      derSequence(derOid("2.5.4.7"), derUtf8String("Zürich")),
    ),
    derSet(derSequence(derOid(OID.commonName), derUtf8String(cn))),
  );
  const sanValue = derSequence(
    Buffer.concat([Buffer.from([0x82, cn.length]), Buffer.from(cn)]),
    Buffer.concat([Buffer.from([0x86, spiffe.length]), Buffer.from(spiffe)]),
    Buffer.from([0x87, 4, 10, 0, 0, 7]),
    Buffer.concat([Buffer.from([0x87, 16]), Buffer.from("20010db8000000000000000000000007", "hex")]),
    Buffer.concat([Buffer.from([0x81, 15]), Buffer.from("ops@example.com")]),
    derImplicitContext(0, derOid("1.3.6.1.4.1.311.20.2.3"), derExplicit(0, derUtf8String("upn@example"))),
    derExplicit(4, encodeName({ commonName: "dir", organization: "Org" })),
  );
  const attributes = derImplicitContext(
    0,
    derSequence(derOid("1.2.840.113549.1.9.7"), derSet(derPrintableString("challenge"))),
    derSequence(
      derOid(OID.extensionRequest),
      derSet(
        derSequence(
          derSequence(derOid(OID.subjectAltName), derOctetString(sanValue)),
          ext.basicConstraints(true, 1),
          ext.keyUsage(["digitalSignature", "keyEncipherment"]),
          ext.extKeyUsage(["serverAuth"]),
        ),
      ),
    ),
  );
  const spki = createPublicKey(p256).export({ format: "der", type: "spki" });
  const richInfo = derSequence(derSmallInteger(0), subject, spki, attributes);
  const rich = derSequence(
    richInfo,
    derSequence(derOid(OID.ecdsaWithSha256)),
    derBitString(sign("sha256", richInfo, p256)),
  );

  const keyFile = join(dir, "key.pem");
  const csrFile = join(dir, "req.csr");
  writeFileSync(keyFile, privateKeyToPem(p256));
  execFileSync(
    "openssl",
    [
      "req",
      "-new",
      "-key",
      keyFile,
      "-out",
      csrFile,
      "-subj",
      `/O=Example/CN=${cn}`,
      "-addext",
      `subjectAltName=DNS:${cn},URI:${spiffe},IP:10.0.0.7,IP:2001:db8::7,email:ops@example.com`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
    ],
    { stdio: "pipe" },
  );
  const openssl = Buffer.from(
    readFileSync(csrFile, "utf8")
      .replace(/-----[A-Z ]+-----/g, "")
      .replace(/\s+/g, ""),
    "base64",
  );
  return [
    seedFrom("createCsr P-256", ours, p256, "sha256"),
    seedFrom("createCsr RSA", oursRsa, rsa, "sha256"),
    seedFrom("hand-built rich", rich, p256, "sha256"),
    seedFrom("openssl", openssl, p256, "sha256"),
  ];
}

const seeds = await makeSeeds();

function report(tally: Map<Outcome, number>): string {
  return [...tally.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

test("seeds agree with @peculiar/x509 before any mutation", () => {
  for (const seed of seeds) compareWithPeculiar(parseCsrDer(seed.der), seed.der, seed.name);
  const rich = parseCsrDer((seeds[2] as Seed).der);
  assert.equal(rich.otherSanCount, 2);
  assert.equal(rich.requestsCa, true);
  assert.deepEqual(rich.ipAddresses, ["10.0.0.7", "2001:db8::7"]);
});

test("mutated signed CSRs: only CsrError escapes, and anything accepted matches @peculiar/x509", (t) => {
  const random = prng(0x05ce7 + SEED_OFFSET);
  const tally = new Map<Outcome, number>();
  for (const seed of seeds) {
    const headers = headerOffsets(seed.der);
    for (let i = 0; i < 1000 * SCALE; i++) {
      let der = mutate(seed.der, headers, random);
      if (random() < 0.25) der = mutate(der, headers, random);
      if (der.equals(seed.der)) tally.set("unchanged", (tally.get("unchanged") ?? 0) + 1);
      else attempt(der, `${seed.name} #${i}`, tally);
    }
  }
  t.diagnostic(report(tally));
  assert.ok((tally.get("CSR_MALFORMED") ?? 0) > 1000);
  assert.ok((tally.get("CSR_BAD_SIGNATURE") ?? 0) > 100);
});

test("mutated and re-signed request infos: the parser's depths agree with @peculiar/x509", (t) => {
  const random = prng(0xc5a + SEED_OFFSET);
  const tally = new Map<Outcome, number>();
  for (const seed of seeds) {
    const headers = headerOffsets(seed.info);
    const rounds = (seed.name.includes("RSA") ? 300 : 1500) * SCALE;
    for (let i = 0; i < rounds; i++) {
      let info = mutate(seed.info, headers, random);
      if (random() < 0.3) info = mutate(info, headers, random);
      if (info.equals(seed.info)) tally.set("unchanged", (tally.get("unchanged") ?? 0) + 1);
      else attempt(resign(seed, info), `${seed.name} re-signed #${i}`, tally);
    }
  }
  t.diagnostic(report(tally));
  // The comparison must actually run: a good share of mutants have to get all the way through.
  assert.ok((tally.get("accepted") ?? 0) > 150, report(tally));
  assert.ok((tally.get("CSR_MALFORMED") ?? 0) > 500, report(tally));
});

test("mutated PEM text: only CsrError escapes", (t) => {
  const random = prng(0x9e3 + SEED_OFFSET);
  const tally = new Map<Outcome, number>();
  const pem = encodePem("CERTIFICATE REQUEST", (seeds[0] as Seed).der);
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-\n\r ";
  for (let i = 0; i < 1500 * SCALE; i++) {
    const chars = pem.split("");
    const edits = 1 + Math.floor(random() * 3);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(random() * chars.length);
      const c = alphabet[Math.floor(random() * alphabet.length)] as string;
      const op = random();
      if (op < 0.4) chars[at] = c;
      else if (op < 0.7) chars.splice(at, 1);
      else chars.splice(at, 0, c);
    }
    try {
      const parsed = parseCsrPem(chars.join(""));
      tally.set("accepted", (tally.get("accepted") ?? 0) + 1);
      compareWithPeculiar(parsed, parsed.der, `pem #${i}`);
    } catch (e) {
      if (!(e instanceof CsrError))
        assert.fail(`pem #${i}: threw ${String(e)} for ${JSON.stringify(chars.join(""))}`);
      tally.set(e.code, (tally.get(e.code) ?? 0) + 1);
    }
  }
  t.diagnostic(report(tally));
  assert.ok((tally.get("CSR_NOT_PEM") ?? 0) > 0);
});
