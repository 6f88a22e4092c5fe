import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  checkPrimeSync,
  createPublicKey,
  ECDH,
  generateKeyPair as generateKeyPairCallback,
  type KeyObject,
  sign,
} from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { promisify } from "node:util";
import {
  generateKeyPair,
  KEY_ALGORITHMS,
  type KeyAlgorithm,
  parseKeyAlgorithm,
  privateKeyToPem,
} from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { encodeName, ext } from "../../common/x509/certificate.js";
import {
  CsrError,
  type CsrErrorCode,
  createCsr,
  MAX_CSR_BYTES,
  type ParsedCsr,
  parseCsrDer,
  parseCsrPem,
} from "../../common/x509/csr.js";
import {
  DerReader,
  derBitString,
  derExplicit,
  derImplicitContext,
  derImplicitPrimitive,
  derInteger,
  derNull,
  derOctetString,
  derOid,
  derSequence,
  derSet,
  derSmallInteger,
  derUtf8String,
  encodingOf,
} from "../../common/x509/der.js";
import { OID } from "../../common/x509/oids.js";
import { x509 } from "../helpers/peculiar.js";

const dir = mkdtempSync(join(tmpdir(), "osm-cert-x509-csr-"));
after(() => rmSync(dir, { recursive: true, force: true }));

let counter = 0;
function opensslCsr(args: string[]): string {
  const name = `r${counter++}`;
  const out = join(dir, `${name}.csr`);
  execFileSync(
    "openssl",
    ["req", "-new", "-nodes", "-keyout", join(dir, `${name}.key`), "-out", out, ...args],
    {
      stdio: "pipe",
    },
  );
  return readFileSync(out, "utf8");
}

interface PeculiarCsrAsn {
  readonly certificationRequestInfo: {
    readonly subject: Iterable<Iterable<{ readonly type: string; readonly value: { toString(): string } }>>;
  };
  readonly signatureAlgorithm: { readonly algorithm: string };
}

/** What @peculiar/x509's full ASN.1 parse says about a CSR, in ParsedCsr's terms. */
function peculiarView(der: Buffer) {
  const csr = new x509.Pkcs10CertificateRequest(der);
  // The schema-level object is protected in the typings but is the parse we want to compare with.
  const asn = (csr as unknown as { asn: PeculiarCsrAsn }).asn;
  const attributes: { oid: string; value: string }[] = [];
  for (const rdn of asn.certificationRequestInfo.subject) {
    for (const atv of rdn) attributes.push({ oid: atv.type, value: atv.value.toString() });
  }
  const cns = csr.subjectName.getField("CN");
  const view = {
    subjectCommonName: cns[0] ?? null,
    subjectAttributes: attributes,
    dnsNames: [] as string[],
    uris: [] as string[],
    ipAddresses: [] as string[],
    emailAddresses: [] as string[],
    otherSanCount: 0,
    requestsCa: false,
    requestedExtensionOids: Array.from(csr.extensions, (e) => e.type),
    spki: Buffer.from(csr.publicKey.rawData),
    signatureAlgorithmOid: asn.signatureAlgorithm.algorithm,
  };
  for (const extension of csr.extensions) {
    if (extension instanceof x509.SubjectAlternativeNameExtension) {
      for (const name of extension.names.items) {
        if (name.type === "dns") view.dnsNames.push(name.value);
        else if (name.type === "url") view.uris.push(name.value);
        else if (name.type === "ip") view.ipAddresses.push(name.value);
        else if (name.type === "email") view.emailAddresses.push(name.value);
        else view.otherSanCount++;
      }
    }
    if (extension instanceof x509.BasicConstraintsExtension) view.requestsCa = extension.ca;
  }
  return view;
}

function ourView(parsed: ParsedCsr) {
  return {
    subjectCommonName: parsed.subjectCommonName,
    subjectAttributes: [...parsed.subjectAttributes],
    dnsNames: [...parsed.dnsNames],
    uris: [...parsed.uris],
    ipAddresses: [...parsed.ipAddresses],
    emailAddresses: [...parsed.emailAddresses],
    otherSanCount: parsed.otherSanCount,
    requestsCa: parsed.requestsCa,
    requestedExtensionOids: [...parsed.requestedExtensionOids],
    spki: parsed.publicKey.spki,
    signatureAlgorithmOid: parsed.signatureAlgorithmOid,
  };
}

function rejects(fn: () => unknown, code: CsrErrorCode, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CsrError, `expected a CsrError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (message !== undefined) assert.match(e.message, message);
    return true;
  });
}

function derOf(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");
}

const SERVICE_CN = "bookstore-v2.bookstore.cluster.local";
const SPIFFE = "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2";

// ---------------------------------------------------------------------------------------------
// Hand-built CSRs, for shapes no tool will write

function infoOf(parts: {
  spki: Buffer;
  subject?: Buffer;
  version?: number;
  attributes?: Buffer | null;
}): Buffer {
  const fields = [
    derSmallInteger(parts.version ?? 0),
    parts.subject ?? encodeName({ commonName: SERVICE_CN }),
    parts.spki,
  ];
  if (parts.attributes !== null) fields.push(parts.attributes ?? derImplicitContext(0));
  return derSequence(...fields);
}

const ALG_ECDSA_SHA256 = derSequence(derOid(OID.ecdsaWithSha256));
const ALG_RSA_SHA256 = derSequence(derOid(OID.sha256WithRsaEncryption), derNull());

function signed(info: Buffer, key: KeyObject, algorithm = ALG_ECDSA_SHA256, hash = "sha256"): Buffer {
  return derSequence(info, algorithm, derBitString(sign(hash, info, key)));
}

function extensionRequest(...extensions: Buffer[]): Buffer {
  return derImplicitContext(0, derSequence(derOid(OID.extensionRequest), derSet(derSequence(...extensions))));
}

const p256 = await generateKeyPair("ecdsa-p256");
const ed25519 = await promisify(generateKeyPairCallback)("ed25519");
const p256Spki = p256.publicKey.export({ format: "der", type: "spki" });

// ---------------------------------------------------------------------------------------------

test("OpenSSL's CSRs parse to the same fields as @peculiar/x509 reads", () => {
  const cases: { name: string; args: string[]; expect: Partial<ReturnType<typeof ourView>> }[] = [
    {
      name: "P-256 with every SAN kind",
      args: [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-subj",
        `/O=Example Org/OU=mesh/CN=${SERVICE_CN}`,
        "-addext",
        `subjectAltName=DNS:${SERVICE_CN},URI:${SPIFFE},IP:10.0.0.7,IP:2001:db8::7,email:ops@example.com`,
        "-addext",
        "keyUsage=digitalSignature",
      ],
      expect: {
        subjectCommonName: SERVICE_CN,
        dnsNames: [SERVICE_CN],
        uris: [SPIFFE],
        ipAddresses: ["10.0.0.7", "2001:db8::7"],
        emailAddresses: ["ops@example.com"],
        requestsCa: false,
      },
    },
    {
      name: "P-384",
      args: ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-subj", `/CN=${SERVICE_CN}`],
      expect: {},
    },
    { name: "RSA 2048", args: ["-newkey", "rsa:2048", "-subj", `/CN=${SERVICE_CN}`], expect: {} },
    {
      name: "P-256 signed with SHA-512",
      args: ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-sha512", "-subj", "/CN=x"],
      expect: { signatureAlgorithmOid: OID.ecdsaWithSha512 },
    },
    {
      name: "asking for CA:TRUE",
      args: [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-subj",
        "/CN=evil-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
      ],
      expect: { requestsCa: true, requestedExtensionOids: [OID.basicConstraints] },
    },
    {
      name: "an empty subject",
      args: ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-subj", "/"],
      expect: { subjectCommonName: null },
    },
  ];
  for (const c of cases) {
    const pem = opensslCsr(c.args);
    const parsed = parseCsrPem(pem);
    const ours = ourView(parsed);
    assert.deepEqual(ours, peculiarView(derOf(pem)), c.name);
    for (const [key, value] of Object.entries(c.expect))
      assert.deepEqual(ours[key as keyof typeof ours], value, `${c.name}: ${key}`);
    assert.deepEqual(parsed.der, derOf(pem));
  }
});

test("the public key is described by algorithm, curve and size", () => {
  const p384 = parseCsrPem(
    opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-subj", "/CN=x"]),
  );
  assert.deepEqual(
    { ...p384.publicKey, spki: undefined },
    { spki: undefined, algorithm: "ec", curve: "P-384" },
  );
  const rsa = parseCsrPem(opensslCsr(["-newkey", "rsa:2048", "-subj", "/CN=x"]));
  assert.deepEqual(
    { ...rsa.publicKey, spki: undefined },
    { spki: undefined, algorithm: "rsa", rsaBits: 2048 },
  );
  assert.equal(rsa.signatureAlgorithmOid, OID.sha256WithRsaEncryption);
});

test("weak keys are refused with CSR_WEAK_KEY and say why", () => {
  rejects(
    () => parseCsrPem(opensslCsr(["-newkey", "rsa:1024", "-subj", "/CN=x"])),
    "CSR_WEAK_KEY",
    /^RSA key of 1024 bits is below the 2048-bit minimum$/,
  );
  rejects(
    () =>
      parseCsrPem(opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp224r1", "-subj", "/CN=x"])),
    "CSR_WEAK_KEY",
    /secp224r1 \(224-bit\) is below the P-256 minimum/,
  );
  rejects(
    () =>
      parseCsrPem(
        opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime192v1", "-subj", "/CN=x"]),
      ),
    "CSR_WEAK_KEY",
    /prime192v1 \(192-bit\)/,
  );
});

test("keys we do not issue for are refused with CSR_UNSUPPORTED_KEY", () => {
  rejects(
    () => parseCsrPem(opensslCsr(["-newkey", "ed25519", "-subj", "/CN=x"])),
    "CSR_UNSUPPORTED_KEY",
    /1\.3\.101\.112 \(ed25519\)/,
  );
  rejects(
    () => parseCsrPem(opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521", "-subj", "/CN=x"])),
    "CSR_UNSUPPORTED_KEY",
    /P-521 are not supported; use P-256 or P-384/,
  );
  const point = p256Spki.subarray(p256Spki.length - 65);
  const unknownAlgorithm = derSequence(derSequence(derOid("1.2.3.4")), derBitString(point));
  rejects(
    () => parseCsrDer(signed(infoOf({ spki: unknownAlgorithm }), p256.privateKey)),
    "CSR_UNSUPPORTED_KEY",
    /1\.2\.3\.4/,
  );
  const explicitCurve = derSequence(
    derSequence(derOid(OID.ecPublicKey), derSequence(derSmallInteger(1))),
    derBitString(point),
  );
  rejects(
    () => parseCsrDer(signed(infoOf({ spki: explicitCurve }), p256.privateKey)),
    "CSR_UNSUPPORTED_KEY",
    /explicit/,
  );
  const secp256k1 = derSequence(
    derSequence(derOid(OID.ecPublicKey), derOid("1.3.132.0.10")),
    derBitString(point),
  );
  rejects(
    () => parseCsrDer(signed(infoOf({ spki: secp256k1 }), p256.privateKey)),
    "CSR_UNSUPPORTED_KEY",
    /secp256k1/,
  );
});

test("RSA keys need a usable public exponent", async () => {
  const { publicKey, privateKey } = await generateKeyPair("rsa-2048");
  const n = Buffer.from(publicKey.export({ format: "jwk" }).n as string, "base64url");
  const spkiWith = (e: number): Buffer =>
    derSequence(
      derSequence(derOid(OID.rsaEncryption), derNull()),
      derBitString(derSequence(derInteger(n), derSmallInteger(e))),
    );
  const csrWith = (e: number): Buffer => signed(infoOf({ spki: spkiWith(e) }), privateKey, ALG_RSA_SHA256);
  rejects(() => parseCsrDer(csrWith(1)), "CSR_WEAK_KEY", /exponent 1/);
  rejects(() => parseCsrDer(csrWith(65536)), "CSR_WEAK_KEY", /exponent 65536/);
  rejects(() => parseCsrDer(csrWith(2 ** 32 + 1)), "CSR_UNSUPPORTED_KEY", /too large/);
  // The real exponent verifies, so the policy above is all that stood in the way.
  assert.equal(parseCsrDer(csrWith(65537)).publicKey.rsaBits, 2048);
  // An absent NULL parameter is tolerated, as OpenSSL and Go do, and the key is re-encoded with it:
  // certified as sent, Go's crypto/x509 refuses the certificate (issue 11, finding 6).
  const noNull = derSequence(
    derSequence(derOid(OID.rsaEncryption)),
    derBitString(derSequence(derInteger(n), derSmallInteger(65537))),
  );
  const canonical = parseCsrDer(signed(infoOf({ spki: noNull }), privateKey, ALG_RSA_SHA256)).publicKey;
  assert.equal(canonical.rsaBits, 2048);
  assert.deepEqual(canonical.spki, spkiWith(65537));
});

test("obviously weak RSA moduli are refused: a small factor, or a prime (issue 11, finding 5)", () => {
  // Signatures are never reached: the key policy refuses first, whatever the signature says.
  const csrWithModulus = (modulus: bigint): Buffer => {
    const bytes = Buffer.from(modulus.toString(16).padStart(512, "0"), "hex");
    const spki = derSequence(
      derSequence(derOid(OID.rsaEncryption), derNull()),
      derBitString(derSequence(derInteger(bytes), derSmallInteger(65537))),
    );
    return derSequence(infoOf({ spki }), ALG_RSA_SHA256, derBitString(Buffer.alloc(256, 1)));
  };
  const top = 1n << 2047n;
  // Divisible by 3: the top bit set keeps it a 2048-bit number.
  const byThree = top + (3n - (top % 3n)) + 6n;
  rejects(() => parseCsrDer(csrWithModulus(byThree)), "CSR_WEAK_KEY", /small prime factor/);
  rejects(
    () => parseCsrDer(csrWithModulus(top + 1n + 2n * 4093n)),
    "CSR_WEAK_KEY",
    /small prime factor|prime/,
  );
  // A 2048-bit prime: the first probable prime above 2^2047 + 2^1000.
  let candidate = top + (1n << 1000n) + 1n;
  while (!checkPrimeSync(candidate)) candidate += 2n;
  rejects(() => parseCsrDer(csrWithModulus(candidate)), "CSR_WEAK_KEY", /modulus is prime/);
  // RSA above 4096 bits is refused (DESIGN.md §6 allows 2048–4096).
  const big = Buffer.alloc(514, 0xff);
  big[0] = 0x00;
  const bigSpki = derSequence(
    derSequence(derOid(OID.rsaEncryption), derNull()),
    derBitString(derSequence(derInteger(big.subarray(1)), derSmallInteger(65537))),
  );
  rejects(
    () => parseCsrDer(derSequence(infoOf({ spki: bigSpki }), ALG_RSA_SHA256, derBitString(Buffer.alloc(8)))),
    "CSR_UNSUPPORTED_KEY",
    /above the 4096-bit maximum/,
  );
});

test("signature algorithms other than ECDSA and RSA PKCS#1 v1.5 with SHA-2 are refused", () => {
  rejects(
    () =>
      parseCsrPem(
        opensslCsr(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-sha1", "-subj", "/CN=x"]),
      ),
    "CSR_UNSUPPORTED_SIGNATURE",
    /1\.2\.840\.10045\.4\.1 \(ecdsaWithSha1\) is not supported/,
  );
  rejects(
    () =>
      parseCsrPem(opensslCsr(["-newkey", "rsa:2048", "-sigopt", "rsa_padding_mode:pss", "-subj", "/CN=x"])),
    "CSR_UNSUPPORTED_SIGNATURE",
    /rsassaPss/,
  );
  // An algorithm that does not match the key is a broken request, not an unsupported one.
  const rsaAlgOnEcKey = signed(infoOf({ spki: p256Spki }), p256.privateKey, ALG_RSA_SHA256);
  rejects(() => parseCsrDer(rsaAlgOnEcKey), "CSR_MALFORMED", /does not match the CSR's EC public key/);
  const ecdsaWithNull = signed(
    infoOf({ spki: p256Spki }),
    p256.privateKey,
    derSequence(derOid(OID.ecdsaWithSha256), derNull()),
  );
  rejects(() => parseCsrDer(ecdsaWithNull), "CSR_MALFORMED", /must have no parameters/);
});

test("createCsr writes requests OpenSSL and @peculiar/x509 both verify", async () => {
  for (const alg of ["ecdsa-p256", "ecdsa-p384", "rsa-2048"] as const) {
    const { privateKey } = await generateKeyPair(alg);
    const der = createCsr({ privateKey, commonName: SERVICE_CN, dnsNames: [SERVICE_CN], uris: [SPIFFE] });
    const file = join(dir, `ours-${alg}.csr`);
    writeFileSync(file, encodePem("CERTIFICATE REQUEST", der));
    // OpenSSL 3.0 exits 0 even on a bad self-signature (DESIGN.md §7), so its words are what count.
    const openssl = spawnSync("openssl", ["req", "-in", file, "-verify", "-noout"], { encoding: "utf8" });
    assert.match(`${openssl.stdout}${openssl.stderr}`, /verify OK/, alg);
    assert.doesNotMatch(`${openssl.stdout}${openssl.stderr}`, /fail/i, alg);
    const theirs = new x509.Pkcs10CertificateRequest(der);
    assert.equal(await theirs.verify(), true, alg);

    const parsed = parseCsrDer(der);
    assert.deepEqual(ourView(parsed), peculiarView(der), alg);
    assert.equal(parsed.subjectCommonName, SERVICE_CN);
    assert.deepEqual(parsed.subjectAttributes, [{ oid: OID.commonName, value: SERVICE_CN }]);
    assert.deepEqual(parsed.dnsNames, [SERVICE_CN]);
    assert.deepEqual(parsed.uris, [SPIFFE]);
    assert.deepEqual(
      parsed.publicKey.spki,
      createPublicKey(privateKey).export({ format: "der", type: "spki" }),
    );
    const expectedAlg = {
      "ecdsa-p256": OID.ecdsaWithSha256,
      "ecdsa-p384": OID.ecdsaWithSha384,
      "rsa-2048": OID.sha256WithRsaEncryption,
    };
    assert.equal(parsed.signatureAlgorithmOid, expectedAlg[alg]);
  }
  // Without SANs there is no extensionRequest, only the empty attribute set RFC 2986 requires.
  const bare = parseCsrDer(createCsr({ privateKey: p256.privateKey, commonName: "x" }));
  assert.deepEqual(bare.requestedExtensionOids, []);
  assert.match(
    execFileSync("openssl", ["asn1parse", "-inform", "DER"], { input: bare.der, encoding: "utf8" }),
    /cont \[ 0 \]\s*$/m,
  );
  rejects(() => createCsr({ privateKey: ed25519.privateKey, commonName: "x" }), "CSR_UNSUPPORTED_KEY");
  rejects(
    () => createCsr({ privateKey: p256.privateKey, commonName: "x", dnsNames: ["bücher.example"] }),
    "CSR_MALFORMED",
  );
});

test("a tampered request fails its self-signature with CSR_BAD_SIGNATURE", async () => {
  const der = createCsr({ privateKey: p256.privateKey, commonName: SERVICE_CN, dnsNames: [SERVICE_CN] });
  const lastByte = Buffer.from(der);
  lastByte[lastByte.length - 1] = (lastByte[lastByte.length - 1] as number) ^ 0x01;
  rejects(() => parseCsrDer(lastByte), "CSR_BAD_SIGNATURE", /does not verify/);
  assert.equal(await new x509.Pkcs10CertificateRequest(lastByte).verify(), false);

  const renamed = Buffer.from(der);
  const at = renamed.indexOf("bookstore-v2");
  renamed[at] = "c".charCodeAt(0);
  rejects(() => parseCsrDer(renamed), "CSR_BAD_SIGNATURE");
  assert.equal(await new x509.Pkcs10CertificateRequest(renamed).verify(), false);

  // Someone else's key under our name: the signature is valid DER, just not by the key in the CSR.
  const other = await generateKeyPair("ecdsa-p256");
  const info = infoOf({ spki: p256Spki });
  rejects(() => parseCsrDer(signed(info, other.privateKey)), "CSR_BAD_SIGNATURE");
  const rsa = await generateKeyPair("rsa-2048");
  const rsaSpki = rsa.publicKey.export({ format: "der", type: "spki" });
  const rsaInfo = infoOf({ spki: rsaSpki });
  const rsaCsr = signed(rsaInfo, rsa.privateKey, ALG_RSA_SHA256);
  assert.equal(parseCsrDer(rsaCsr).publicKey.rsaBits, 2048);
  const rsaTampered = Buffer.from(rsaCsr);
  rsaTampered[rsaTampered.length - 5] = (rsaTampered[rsaTampered.length - 5] as number) ^ 0x80;
  rejects(() => parseCsrDer(rsaTampered), "CSR_BAD_SIGNATURE");
});

test("framing errors: trailing bytes, truncation, non-minimal lengths, size limits", () => {
  const der = createCsr({ privateKey: p256.privateKey, commonName: SERVICE_CN, uris: [SPIFFE] });
  rejects(() => parseCsrDer(Buffer.concat([der, Buffer.from([0])])), "CSR_MALFORMED", /trailing/);
  rejects(() => parseCsrDer(der.subarray(0, der.length - 1)), "CSR_MALFORMED", /truncated/);
  rejects(() => parseCsrDer(der.subarray(0, 40)), "CSR_MALFORMED", /truncated/);
  rejects(() => parseCsrDer(Buffer.alloc(0)), "CSR_MALFORMED", /empty/);
  // The same CSR with its outer length in a needlessly long form (one extra leading 0x00 octet).
  const count = (der[1] as number) & 0x7f;
  const body = der.subarray(2 + count);
  const nonMinimal = Buffer.concat([
    Buffer.from([0x30, 0x80 | (count + 1), 0x00]),
    der.subarray(2, 2 + count),
    body,
  ]);
  rejects(() => parseCsrDer(nonMinimal), "CSR_MALFORMED", /non-minimal length/);
  const indefinite = Buffer.concat([Buffer.from([0x30, 0x80]), body, Buffer.from([0, 0])]);
  rejects(() => parseCsrDer(indefinite), "CSR_MALFORMED", /indefinite/);
  // Trailing bytes hidden inside the signed part are caught before the signature is even checked.
  const info = infoOf({ spki: p256Spki });
  const padded = derSequence(...readChildren(info), Buffer.from([0x05, 0x00]));
  rejects(
    () => parseCsrDer(signed(padded, p256.privateKey)),
    "CSR_MALFORMED",
    /certificationRequestInfo: 2 unexpected trailing/,
  );

  rejects(() => parseCsrDer(Buffer.alloc(MAX_CSR_BYTES + 1, 0x30)), "CSR_TOO_LARGE");
  const pem = encodePem("CERTIFICATE REQUEST", der);
  rejects(() => parseCsrPem(pem + " ".repeat(MAX_CSR_BYTES)), "CSR_TOO_LARGE", /8192-byte limit/);
  rejects(() => parseCsrPem("hello"), "CSR_NOT_PEM", /no "-----BEGIN CERTIFICATE REQUEST-----"/);
  rejects(() => parseCsrPem(encodePem("CERTIFICATE", der)), "CSR_NOT_PEM", /found "CERTIFICATE"/);
  rejects(() => parseCsrPem(pem + pem), "CSR_NOT_PEM", /found 2 blocks/);
  rejects(() => parseCsrPem(privateKeyToPem(p256.privateKey)), "CSR_NOT_PEM", /PRIVATE KEY/);
  assert.equal(parseCsrPem(encodePem("NEW CERTIFICATE REQUEST", der)).subjectCommonName, SERVICE_CN);
  assert.equal(parseCsrPem(`text before\r\n${pem.replace(/\n/g, "\r\n")}`).subjectCommonName, SERVICE_CN);
});

function readChildren(sequence: Buffer): Buffer[] {
  const top = new DerReader(sequence);
  const inner = top.enter(top.read("sequence"));
  const out: Buffer[] = [];
  while (!inner.done) out.push(encodingOf(sequence, inner.read("child")));
  return out;
}

test("structure errors are CSR_MALFORMED with the field named", () => {
  const sign256 = (info: Buffer) => signed(info, p256.privateKey);
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: p256Spki, version: 1 }))),
    "CSR_MALFORMED",
    /version must be 0/,
  );
  const twoCns = derSequence(
    derSet(derSequence(derOid(OID.commonName), derUtf8String(SERVICE_CN))),
    derSet(derSequence(derOid(OID.commonName), derUtf8String("other.ns.cluster.local"))),
  );
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: p256Spki, subject: twoCns }))),
    "CSR_MALFORMED",
    /2 commonName attributes/,
  );
  const emptyRdn = derSequence(derSet());
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: p256Spki, subject: emptyRdn }))),
    "CSR_MALFORMED",
    /empty RDN/,
  );
  const san = ext.subjectAltName({ dns: [SERVICE_CN] });
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: p256Spki, attributes: extensionRequest(san, san) }))),
    "CSR_MALFORMED",
    /2\.5\.29\.17 \(subjectAltName\) appears more than once/,
  );
  const emptySan = derSequence(derOid(OID.subjectAltName), Buffer.from([0x04, 0x02, 0x30, 0x00]));
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: p256Spki, attributes: extensionRequest(emptySan) }))),
    "CSR_MALFORMED",
    /empty/,
  );
  const badIp = derSequence(
    derOid(OID.subjectAltName),
    Buffer.from([0x04, 0x07, 0x30, 0x05, 0x87, 0x03, 10, 0, 0]),
  );
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: p256Spki, attributes: extensionRequest(badIp) }))),
    "CSR_MALFORMED",
    /4 or 16 octets/,
  );
  const twoRequests = derImplicitContext(
    0,
    derSequence(derOid(OID.extensionRequest), derSet(derSequence(san))),
    derSequence(derOid(OID.extensionRequest), derSet(derSequence(ext.basicConstraints(true)))),
  );
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: p256Spki, attributes: twoRequests }))),
    "CSR_MALFORMED",
    /more than one extensionRequest/,
  );

  // A point that is not on the curve is caught when the key is loaded, before any verification.
  const offCurve = Buffer.from(p256Spki);
  offCurve[offCurve.length - 1] = (offCurve[offCurve.length - 1] as number) ^ 0x01;
  rejects(() => parseCsrDer(sign256(infoOf({ spki: offCurve }))), "CSR_MALFORMED", /not a point on P-256/);
  const shortPoint = derSequence(
    derSequence(derOid(OID.ecPublicKey), derOid(OID.prime256v1)),
    derBitString(Buffer.from([4, 1, 2])),
  );
  rejects(
    () => parseCsrDer(sign256(infoOf({ spki: shortPoint }))),
    "CSR_MALFORMED",
    /not a P-256 point encoding/,
  );
});

test("accepts what OpenSSL accepts (no attributes, SAN kinds we then refuse by policy); compressed points are refused", async () => {
  const noAttributes = parseCsrDer(signed(infoOf({ spki: p256Spki, attributes: null }), p256.privateKey));
  assert.equal(noAttributes.subjectCommonName, SERVICE_CN);

  const point = p256Spki.subarray(p256Spki.length - 65);
  const compressed = ECDH.convertKey(point, "prime256v1", undefined, undefined, "compressed") as Buffer;
  const compressedSpki = derSequence(
    derSequence(derOid(OID.ecPublicKey), derOid(OID.prime256v1)),
    derBitString(compressed),
  );
  // A compressed point is a valid key, but certified as sent Go's crypto/x509 cannot parse the
  // certificate (issue 11, finding 6): refused with a reason that says what to send instead.
  assert.throws(
    () => parseCsrDer(signed(infoOf({ spki: compressedSpki }), p256.privateKey)),
    (e: unknown) =>
      e instanceof CsrError && e.code === "CSR_UNSUPPORTED_KEY" && /uncompressed/.test(e.message),
  );

  // otherName and directoryName SANs are counted, so policy can refuse them by name.
  const otherName = derImplicitContext(
    0,
    derOid("1.3.6.1.4.1.311.20.2.3"),
    derExplicit(0, derUtf8String("a")),
  );
  const dirName = derExplicit(4, encodeName({ commonName: "x" }));
  const sanValue = derSequence(Buffer.from([0x82, 0x01, 0x61]), otherName, dirName);
  const sanExt = derSequence(derOid(OID.subjectAltName), derOctetString(sanValue));
  const withOthers = signed(
    infoOf({ spki: p256Spki, attributes: extensionRequest(sanExt) }),
    p256.privateKey,
  );
  const others = parseCsrDer(withOthers);
  assert.equal(others.otherSanCount, 2);
  assert.deepEqual(others.dnsNames, ["a"]);
  assert.deepEqual(ourView(others), peculiarView(withOthers));

  const registeredId = derSequence(derImplicitPrimitive(8, derOid("1.2.3").subarray(2)));
  const withId = extensionRequest(derSequence(derOid(OID.subjectAltName), derOctetString(registeredId)));
  assert.equal(
    parseCsrDer(signed(infoOf({ spki: p256Spki, attributes: withId }), p256.privateKey)).otherSanCount,
    1,
  );
  // ediPartyName and x400Address are refused outright; libraries do not even agree on their tagging.
  const edi = derSequence(derImplicitContext(5, derExplicit(1, derUtf8String("party"))));
  const withEdi = extensionRequest(derSequence(derOid(OID.subjectAltName), derOctetString(edi)));
  rejects(
    () => parseCsrDer(signed(infoOf({ spki: p256Spki, attributes: withEdi }), p256.privateKey)),
    "CSR_MALFORMED",
    /ediPartyName entries are not supported/,
  );
  assert.equal(await new x509.Pkcs10CertificateRequest(withOthers).verify(), true);
});

test("a parsed CSR owns its bytes", () => {
  const der = createCsr({ privateKey: p256.privateKey, commonName: SERVICE_CN });
  const input = Buffer.from(der);
  const parsed = parseCsrDer(input);
  input.fill(0);
  assert.deepEqual(parsed.der, der);
  assert.deepEqual(parsed.publicKey.spki, p256Spki);
});

test("key algorithms: the flag's values, generation and PKCS#8 export", async () => {
  assert.deepEqual(KEY_ALGORITHMS, ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]);
  for (const alg of KEY_ALGORITHMS) assert.equal(parseKeyAlgorithm(alg), alg);
  assert.equal(parseKeyAlgorithm(" ECDSA-P384 "), "ecdsa-p384");
  assert.throws(
    () => parseKeyAlgorithm("ed25519"),
    (e: unknown) =>
      e instanceof Error &&
      e.message ===
        'invalid key algorithm "ed25519": must be one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096' &&
      (e as Error & { code?: string }).code === "ERR_OSM_CERT_KEY_ALGORITHM",
  );
  const expected: Record<KeyAlgorithm, string> = {
    "ecdsa-p256": "prime256v1",
    "ecdsa-p384": "secp384r1",
    "rsa-2048": "2048",
    "rsa-3072": "3072",
    "rsa-4096": "4096",
  };
  const describe = (key: KeyObject): string =>
    key.asymmetricKeyType === "ec"
      ? String(key.asymmetricKeyDetails?.namedCurve)
      : String(key.asymmetricKeyDetails?.modulusLength);
  for (const alg of ["ecdsa-p256", "ecdsa-p384", "rsa-2048"] as const) {
    const sync = await generateKeyPair(alg);
    assert.equal(describe(sync.privateKey), expected[alg]);
    assert.equal(sync.publicKey.type, "public");
  }
  const [p384, rsa3072] = await Promise.all([generateKeyPair("ecdsa-p384"), generateKeyPair("rsa-3072")]);
  assert.equal(describe(p384.privateKey), "secp384r1");
  assert.equal(describe(rsa3072.privateKey), "3072");
  assert.equal(rsa3072.privateKey.asymmetricKeyDetails?.publicExponent, 65537n);
  const pem = privateKeyToPem(p256.privateKey);
  assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n/);
  assert.match(
    execFileSync("openssl", ["pkey", "-noout", "-text"], { input: pem, encoding: "utf8" }),
    /prime256v1|P-256/,
  );
  assert.throws(() => privateKeyToPem(p256.publicKey), /expected a private key/);
});
