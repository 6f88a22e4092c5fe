// PKCS#10 certification requests (RFC 2986): a strict hand-written parser for the signing hot path,
// the key policy of DESIGN.md §9, and the writer the agent uses. The parser walks the DER once,
// keeps every byte it hands out identical to the input, and verifies the self-signature with
// node's native crypto; it is fuzzed and cross-checked against @peculiar/x509 in the unit tests.

import {
  checkPrimeSync,
  constants,
  createPrivateKey,
  createPublicKey,
  type JsonWebKey,
  type KeyObject,
  privateDecrypt,
  publicEncrypt,
  sign,
  verify,
} from "node:crypto";
import { decodePemBlocks } from "../pem.js";
import { CertificateError, encodeName, ext, signerFor } from "./certificate.js";
import {
  checkIntegerContent,
  checkNull,
  checkWellFormed,
  DerError,
  DerReader,
  derBitString,
  derConstructed,
  derNull,
  derOid,
  derSequence,
  derSet,
  derSmallInteger,
  encodingOf,
  readBitString,
  readBoolean,
  readOid,
  readSmallInteger,
  TAG,
  type Tlv,
} from "./der.js";
import {
  emptyGeneralNames,
  type GeneralNames,
  parseName,
  parseSubjectAltName,
  readExtensions,
} from "./names.js";
import { describeOid, OID, WEAK_CURVES } from "./oids.js";

export type CsrErrorCode =
  | "CSR_NOT_PEM"
  | "CSR_MALFORMED"
  | "CSR_BAD_SIGNATURE"
  | "CSR_UNSUPPORTED_KEY"
  | "CSR_WEAK_KEY"
  | "CSR_UNSUPPORTED_SIGNATURE"
  | "CSR_TOO_LARGE";

/** Every way a CSR can be refused; `message` names the problem for the human who sent it. */
export class CsrError extends Error {
  readonly code: CsrErrorCode;

  constructor(code: CsrErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

export interface CsrPublicKey {
  /** Exact DER of the SubjectPublicKeyInfo, byte-for-byte as in the CSR. */
  readonly spki: Buffer;
  readonly algorithm: "ec" | "rsa";
  readonly curve?: "P-256" | "P-384" | "P-521";
  readonly rsaBits?: number;
}

export interface ParsedCsr {
  readonly der: Buffer;
  readonly subjectCommonName: string | null;
  /** Every RDN attribute, in order. Non-string values are given as "#" + hex of their DER (RFC 4514). */
  readonly subjectAttributes: readonly { oid: string; value: string }[];
  readonly dnsNames: readonly string[];
  readonly uris: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly emailAddresses: readonly string[];
  /** SAN entries of other kinds: otherName, directoryName, registeredID. */
  readonly otherSanCount: number;
  /** The extensionRequest carries basicConstraints with cA TRUE. */
  readonly requestsCa: boolean;
  readonly requestedExtensionOids: readonly string[];
  readonly publicKey: CsrPublicKey;
  readonly signatureAlgorithmOid: string;
}

export const MAX_CSR_BYTES = 8192;

const PEM_LABELS = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/** A PEM CSR ("CERTIFICATE REQUEST", or the older "NEW CERTIFICATE REQUEST"), parsed and verified. */
export function parseCsrPem(pem: string): ParsedCsr {
  // Checked before any regex or base64 work, so oversized input costs nothing.
  const size = pem.length > MAX_CSR_BYTES ? pem.length : Buffer.byteLength(pem, "utf8");
  if (size > MAX_CSR_BYTES) {
    throw new CsrError("CSR_TOO_LARGE", `CSR PEM is ${size} bytes, above the ${MAX_CSR_BYTES}-byte limit`);
  }
  const blocks = decodePemBlocks(pem);
  if (blocks.length === 0) {
    throw new CsrError("CSR_NOT_PEM", 'not PEM: no "-----BEGIN CERTIFICATE REQUEST-----" block found');
  }
  if (blocks.length > 1) {
    throw new CsrError(
      "CSR_NOT_PEM",
      `expected one PEM CERTIFICATE REQUEST block, found ${blocks.length} blocks`,
    );
  }
  const block = blocks[0] as { label: string; der: Buffer };
  if (!PEM_LABELS.includes(block.label)) {
    throw new CsrError("CSR_NOT_PEM", `expected a PEM "CERTIFICATE REQUEST" block, found "${block.label}"`);
  }
  if (block.der.length === 0) throw new CsrError("CSR_NOT_PEM", 'PEM "CERTIFICATE REQUEST" block is empty');
  return parseCsrDer(block.der);
}

/** A DER CSR, strictly parsed, held to the key and signature policy, and its self-signature verified. */
export function parseCsrDer(input: Buffer): ParsedCsr {
  if (input.length > MAX_CSR_BYTES) {
    throw new CsrError(
      "CSR_TOO_LARGE",
      `CSR is ${input.length} bytes, above the ${MAX_CSR_BYTES}-byte limit`,
    );
  }
  if (input.length === 0) throw new CsrError("CSR_MALFORMED", "malformed CSR: empty");
  // Our own copy: callers may reuse their buffer, and every Buffer we return is a view of this one.
  const der = Buffer.from(input);
  try {
    return parse(der);
  } catch (e) {
    if (e instanceof DerError) {
      throw new CsrError("CSR_MALFORMED", `malformed CSR: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

function malformed(message: string): CsrError {
  return new CsrError("CSR_MALFORMED", `malformed CSR: ${message}`);
}

function parse(der: Buffer): ParsedCsr {
  const top = new DerReader(der);
  const outer = top.expect(TAG.SEQUENCE, "CertificationRequest");
  top.expectEnd("CertificationRequest");
  const request = top.enter(outer);
  const infoTlv = request.expect(TAG.SEQUENCE, "certificationRequestInfo");
  const signatureAlgorithmTlv = request.expect(TAG.SEQUENCE, "signatureAlgorithm");
  const signatureTlv = request.expect(TAG.BIT_STRING, "signature");
  request.expectEnd("CertificationRequest");

  const info = request.enter(infoTlv);
  const version = readSmallInteger(der, info.expect(TAG.INTEGER, "version"), "version");
  if (version !== 0) throw malformed(`version must be 0 (v1), found ${version}`);
  const subjectTlv = info.expect(TAG.SEQUENCE, "subject");
  const spkiTlv = info.expect(TAG.SEQUENCE, "subjectPKInfo");
  // RFC 2986 makes attributes mandatory, but OpenSSL (and @peculiar) accept requests without them.
  const attributesTlv = info.optional(TAG.CONTEXT_CONSTRUCTED | 0, "attributes");
  info.expectEnd("certificationRequestInfo");

  const subject = parseSubject(der, subjectTlv);
  const requested = parseAttributes(der, attributesTlv);
  const key = parsePublicKey(der, spkiTlv);
  const signatureAlgorithm = parseSignatureAlgorithm(der, signatureAlgorithmTlv, key.info);
  const signature = readBitString(der, signatureTlv, "signature").bytes;

  const verifier = importKey(key);
  let valid = false;
  try {
    valid = verify(signatureAlgorithm.hash, encodingOf(der, infoTlv), verifier, signature);
  } catch {
    // OpenSSL throws rather than returning false for some garbage signatures; both mean "does not verify".
    valid = false;
  }
  if (!valid) {
    throw new CsrError("CSR_BAD_SIGNATURE", "CSR signature does not verify with the CSR's own public key");
  }

  return {
    der,
    subjectCommonName: subject.commonName,
    subjectAttributes: subject.attributes,
    dnsNames: requested.dnsNames,
    uris: requested.uris,
    ipAddresses: requested.ipAddresses,
    emailAddresses: requested.emailAddresses,
    otherSanCount: requested.otherSanCount,
    requestsCa: requested.requestsCa,
    requestedExtensionOids: requested.extensionOids,
    publicKey: key.info,
    signatureAlgorithmOid: signatureAlgorithm.oid,
  };
}

// ---------------------------------------------------------------------------------------------
// Subject

function parseSubject(
  der: Buffer,
  tlv: Tlv,
): { commonName: string | null; attributes: { oid: string; value: string }[] } {
  const attributes: { oid: string; value: string }[] = [];
  let commonName: string | null = null;
  let commonNames = 0;
  for (const attribute of parseName(der, tlv, "subject")) {
    if (attribute.oid === OID.commonName) {
      if (!attribute.isString) throw malformed("subject commonName is not a string");
      commonName = attribute.value;
      commonNames++;
    }
    attributes.push({ oid: attribute.oid, value: attribute.value });
  }
  // Two CNs would let a request show a policy check one name and a certificate user another.
  if (commonNames > 1) {
    throw malformed(`subject has ${commonNames} commonName attributes; at most one is allowed`);
  }
  return { commonName, attributes };
}

// ---------------------------------------------------------------------------------------------
// Public key and key policy

interface ParsedKey {
  readonly info: CsrPublicKey;
  /** The EC point or the RSAPublicKey DER: the BIT STRING's value. */
  readonly keyBytes: Buffer;
}

const CURVE_BY_OID: ReadonlyMap<string, { curve: "P-256" | "P-384"; size: number }> = new Map([
  [OID.prime256v1, { curve: "P-256", size: 32 }],
  [OID.secp384r1, { curve: "P-384", size: 48 }],
]);

const MIN_RSA_BITS = 2048;
/** DESIGN.md §6 allows RSA up to 4096 bits; larger keys only cost verification time. */
const MAX_RSA_BITS = 4096;
const RSA_ALGORITHM = derSequence(derOid(OID.rsaEncryption), derNull());

/** The product of the odd primes below 4096: gcd(n, it) > 1 finds any small factor in one step. */
const SMALL_PRIMES_PRODUCT: bigint = (() => {
  let product = 1n;
  const sieve = new Uint8Array(4096);
  for (let p = 3; p < sieve.length; p += 2) {
    if (sieve[p] === 1) continue;
    product *= BigInt(p);
    for (let m = p * p; m < sieve.length; m += 2 * p) sieve[m] = 1;
  }
  return product;
})();

function gcd(a: bigint, b: bigint): bigint {
  let [x, y] = [a, b];
  while (y !== 0n) [x, y] = [y, x % y];
  return x;
}

/** e⁻¹ mod m, or null when e and m are not coprime. */
function modInverse(e: bigint, m: bigint): bigint | null {
  let [r0, r1, s0, s1] = [m, e % m, 0n, 1n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  return r0 === 1n ? ((s0 % m) + m) % m : null;
}

const base64url = (n: bigint): string => {
  const hex = n.toString(16);
  return Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, "hex").toString("base64url");
};

/**
 * Whether anyone can sign for this key: true when n is prime, found the way an attacker would —
 * d = e⁻¹ mod (n − 1) — and checked by one native modular exponentiation. As a CRT key with p = n,
 * q = 1 and qi = 1, OpenSSL's private operation reduces to c^d mod n.
 */
function privateExponentFollows(modulus: Buffer, n: bigint, e: bigint): boolean {
  const d = modInverse(e, n - 1n);
  // No inverse: no private exponent at all, so no signature by this key can verify either.
  if (d === null) return false;
  try {
    const key = createPrivateKey({
      key: {
        kty: "RSA",
        n: base64url(n),
        e: base64url(e),
        d: base64url(d),
        p: base64url(n),
        q: base64url(1n),
        dp: base64url(d),
        dq: base64url(0n),
        qi: base64url(1n),
      },
      format: "jwk",
    });
    const x = Buffer.alloc(modulus.length);
    x[x.length - 1] = 2;
    const c = publicEncrypt({ key, padding: constants.RSA_NO_PADDING }, x);
    return privateDecrypt({ key, padding: constants.RSA_NO_PADDING }, c).equals(x);
  } catch {
    // OpenSSL refused the construction: decide the slow way rather than let a prime through.
    return checkPrimeSync(n, { checks: 2 });
  }
}

/**
 * A modulus with a small factor, or a prime one, is no RSA key: its private exponent follows from
 * public data. Costs one modular exponentiation (≈5 ms at 2048 bits, ≈50 ms at 4096), prime or
 * not. checkPrimeSync is not used: OpenSSL 3 runs at least 64 Miller–Rabin rounds on a prime
 * whatever `checks` asks, so one CSR with a prime 4096-bit modulus held the event loop for ≈5 s
 * (found by test/property/csr-parser.test.ts).
 */
function checkRsaModulusStrength(modulus: Buffer, e: number): void {
  const n = BigInt(`0x${modulus.toString("hex")}`);
  if ((n & 1n) === 0n || gcd(n, SMALL_PRIMES_PRODUCT) !== 1n) {
    throw new CsrError("CSR_WEAK_KEY", "RSA modulus has a small prime factor: this is not a usable RSA key");
  }
  if (privateExponentFollows(modulus, n, BigInt(e))) {
    throw new CsrError("CSR_WEAK_KEY", "RSA modulus is prime: anyone could derive its private key");
  }
}

function parsePublicKey(der: Buffer, tlv: Tlv): ParsedKey {
  const spkiReader = new DerReader(der, tlv.start, tlv.end);
  const algorithm = spkiReader.enter(spkiReader.expect(TAG.SEQUENCE, "subjectPKInfo.algorithm"));
  const keyTlv = spkiReader.expect(TAG.BIT_STRING, "subjectPKInfo.subjectPublicKey");
  spkiReader.expectEnd("subjectPKInfo");
  const algorithmOid = readOid(der, algorithm.expect(TAG.OID, "subjectPKInfo.algorithm"));
  const params = algorithm.done ? undefined : algorithm.read("subjectPKInfo.algorithm parameters");
  algorithm.expectEnd("subjectPKInfo.algorithm");
  const keyBytes = readBitString(der, keyTlv, "subjectPublicKey").bytes;
  const spki = encodingOf(der, tlv);

  if (algorithmOid === OID.ecPublicKey) {
    if (params === undefined) throw malformed("EC public key has no curve parameter");
    if (params.tag === TAG.SEQUENCE || params.tag === TAG.NULL) {
      throw new CsrError(
        "CSR_UNSUPPORTED_KEY",
        "EC keys with explicit or implicit curve parameters are not supported; use the named curve P-256 or P-384",
      );
    }
    const curveOid = readOid(der, params, "EC curve");
    const known = CURVE_BY_OID.get(curveOid);
    if (known === undefined) {
      if (curveOid === OID.secp521r1) {
        throw new CsrError("CSR_UNSUPPORTED_KEY", "EC keys on P-521 are not supported; use P-256 or P-384");
      }
      const weak = WEAK_CURVES.get(curveOid);
      if (weak !== undefined) {
        throw new CsrError(
          "CSR_WEAK_KEY",
          `EC key on ${weak.name} (${weak.bits}-bit) is below the P-256 minimum; use P-256 or P-384`,
        );
      }
      throw new CsrError(
        "CSR_UNSUPPORTED_KEY",
        `EC curve ${describeOid(curveOid)} is not supported; use P-256 or P-384`,
      );
    }
    // SEC 1 §2.3.3: 0x04 ‖ X ‖ Y, or the compressed 0x02/0x03 ‖ X.
    const form = keyBytes[0];
    if ((form === 0x02 || form === 0x03) && keyBytes.length === 1 + known.size) {
      // Certified as sent, a compressed point yields a certificate Go's crypto/x509 (and so most
      // control planes) cannot parse; every key generator can produce the uncompressed form.
      throw new CsrError(
        "CSR_UNSUPPORTED_KEY",
        "compressed EC points are not supported (Go's crypto/x509 cannot read certificates carrying them); send the uncompressed form (0x04 ‖ X ‖ Y)",
      );
    }
    if (form !== 0x04 || keyBytes.length !== 1 + 2 * known.size) {
      throw malformed(`EC public key is not a ${known.curve} point encoding (${keyBytes.length} bytes)`);
    }
    return { info: { spki, algorithm: "ec", curve: known.curve }, keyBytes };
  }

  if (algorithmOid === OID.rsaEncryption) {
    // RFC 3279 §2.3.1 says NULL; an absent parameter is tolerated as OpenSSL and Go do.
    if (params !== undefined) checkNull(params, "rsaEncryption parameters");
    const rsaBits = checkRsaPublicKey(der, keyTlv.start + 1, keyTlv.end);
    // Re-encoded with the NULL parameters RFC 3279 requires: certified without them, Go's
    // crypto/x509 refuses the certificate. Same key, canonical bytes.
    return {
      info: { spki: derSequence(RSA_ALGORITHM, derBitString(keyBytes)), algorithm: "rsa", rsaBits },
      keyBytes,
    };
  }

  if (algorithmOid === OID.rsassaPss) {
    throw new CsrError(
      "CSR_UNSUPPORTED_KEY",
      "RSASSA-PSS keys are not supported; use an rsaEncryption key (RSA ≥ 2048 bits) or ECDSA P-256/P-384",
    );
  }
  throw new CsrError(
    "CSR_UNSUPPORTED_KEY",
    `public key algorithm ${describeOid(algorithmOid)} is not supported; use ECDSA P-256/P-384 or RSA ≥ 2048 bits`,
  );
}

/** RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }; returns the modulus size in bits. */
function checkRsaPublicKey(der: Buffer, start: number, end: number): number {
  const outer = new DerReader(der, start, end);
  const key = outer.enter(outer.expect(TAG.SEQUENCE, "RSAPublicKey"));
  outer.expectEnd("RSAPublicKey");
  const modulus = key.expect(TAG.INTEGER, "RSAPublicKey.modulus");
  const exponent = key.expect(TAG.INTEGER, "RSAPublicKey.publicExponent");
  key.expectEnd("RSAPublicKey");
  checkIntegerContent(der, modulus, "RSAPublicKey.modulus");
  checkIntegerContent(der, exponent, "RSAPublicKey.publicExponent");
  if ((der[modulus.start] as number) >= 0x80 || (der[exponent.start] as number) >= 0x80) {
    throw malformed("RSA modulus and exponent must be positive");
  }
  let first = modulus.start;
  if (der[first] === 0 && first + 1 < modulus.end) first++;
  const top = der[first] as number;
  const bits = top === 0 ? 0 : (modulus.end - first - 1) * 8 + (32 - Math.clz32(top));
  if (bits < MIN_RSA_BITS) {
    throw new CsrError("CSR_WEAK_KEY", `RSA key of ${bits} bits is below the ${MIN_RSA_BITS}-bit minimum`);
  }
  if (bits > MAX_RSA_BITS) {
    throw new CsrError(
      "CSR_UNSUPPORTED_KEY",
      `RSA key of ${bits} bits is above the ${MAX_RSA_BITS}-bit maximum`,
    );
  }
  // Exponents must be odd and ≥ 3 to be a usable RSA key; above 2^31 - 1 is refused as Go does.
  const expLength = exponent.end - exponent.start;
  if (expLength > 4 + (der[exponent.start] === 0 ? 1 : 0)) {
    throw new CsrError("CSR_UNSUPPORTED_KEY", "RSA public exponent is too large (above 2^31 - 1)");
  }
  const e = der.readUIntBE(exponent.start, expLength);
  if (e > 0x7fffffff) {
    throw new CsrError("CSR_UNSUPPORTED_KEY", "RSA public exponent is too large (above 2^31 - 1)");
  }
  if (e < 3 || e % 2 === 0) {
    throw new CsrError("CSR_WEAK_KEY", `RSA public exponent ${e} is not an odd number ≥ 3`);
  }
  checkRsaModulusStrength(der.subarray(first, modulus.end), e);
  return bits;
}

/**
 * The cheapest correct KeyObject import, as measured on node 20 / OpenSSL 3.0 (import + verify):
 * - SPKI DER goes through OpenSSL 3.0's generic decoder, which spends most of its time in decoder
 *   lookup and locking — for RSA-2048 that is ≈4.6k loads/s, against ≈150k/s for the same key as
 *   PKCS#1 RSAPublicKey (the BIT STRING's value), so RSA goes in as PKCS#1 (≈4× faster end to end);
 * - an uncompressed P-256 point as a JWK skips the decoder (OpenSSL then checks the point with a
 *   scalar multiply, which nistz256 does fast): ≈25 % more import + verify per second than SPKI;
 * - for P-384 that check runs on the generic code path and JWK is ≈30 % slower than SPKI, so P-384
 *   (and compressed points, which JWK cannot express) go in as SPKI.
 * Every path validates the key: off-curve points and malformed moduli fail here.
 */
function importKey(key: ParsedKey): KeyObject {
  try {
    if (key.info.algorithm === "rsa") {
      return createPublicKey({ key: key.keyBytes, format: "der", type: "pkcs1" });
    }
    if (key.info.curve === "P-256" && key.keyBytes[0] === 0x04) {
      const jwk: JsonWebKey = {
        kty: "EC",
        crv: "P-256",
        x: key.keyBytes.toString("base64url", 1, 33),
        y: key.keyBytes.toString("base64url", 33, 65),
      };
      return createPublicKey({ key: jwk, format: "jwk" });
    }
    return createPublicKey({ key: key.info.spki, format: "der", type: "spki" });
  } catch (e) {
    const what =
      key.info.algorithm === "rsa" ? "RSA public key" : `EC public key (not a point on ${key.info.curve})`;
    throw new CsrError("CSR_MALFORMED", `malformed CSR: invalid ${what}`, { cause: e });
  }
}

// ---------------------------------------------------------------------------------------------
// Signature algorithm policy

const SIGNATURE_ALGORITHMS: ReadonlyMap<string, { hash: string; key: "ec" | "rsa" }> = new Map([
  [OID.ecdsaWithSha256, { hash: "sha256", key: "ec" }],
  [OID.ecdsaWithSha384, { hash: "sha384", key: "ec" }],
  [OID.ecdsaWithSha512, { hash: "sha512", key: "ec" }],
  [OID.sha256WithRsaEncryption, { hash: "sha256", key: "rsa" }],
  [OID.sha384WithRsaEncryption, { hash: "sha384", key: "rsa" }],
  [OID.sha512WithRsaEncryption, { hash: "sha512", key: "rsa" }],
] as const);

function parseSignatureAlgorithm(der: Buffer, tlv: Tlv, key: CsrPublicKey): { oid: string; hash: string } {
  const algorithm = new DerReader(der, tlv.start, tlv.end);
  const oid = readOid(der, algorithm.expect(TAG.OID, "signatureAlgorithm"));
  const params = algorithm.done ? undefined : algorithm.read("signatureAlgorithm parameters");
  algorithm.expectEnd("signatureAlgorithm");
  const known = SIGNATURE_ALGORITHMS.get(oid);
  if (known === undefined) {
    throw new CsrError(
      "CSR_UNSUPPORTED_SIGNATURE",
      `signature algorithm ${describeOid(oid)} is not supported; use ECDSA or RSA PKCS#1 v1.5 with SHA-256, SHA-384 or SHA-512`,
    );
  }
  if (known.key === "ec") {
    // RFC 5758 §3.2: the parameters field MUST be absent.
    if (params !== undefined) throw malformed(`${describeOid(oid)} must have no parameters`);
  } else if (params !== undefined) {
    checkNull(params, "signatureAlgorithm parameters");
  }
  if (known.key !== key.algorithm) {
    throw malformed(
      `signature algorithm ${describeOid(oid)} does not match the CSR's ${key.algorithm.toUpperCase()} public key`,
    );
  }
  return { oid, hash: known.hash };
}

// ---------------------------------------------------------------------------------------------
// Attributes: extensionRequest (PKCS#9), with subjectAltName and basicConstraints read in full

interface RequestedExtensions extends GeneralNames {
  requestsCa: boolean;
  extensionOids: string[];
}

function parseAttributes(der: Buffer, tlv: Tlv | undefined): RequestedExtensions {
  const out: RequestedExtensions = { ...emptyGeneralNames(), requestsCa: false, extensionOids: [] };
  if (tlv === undefined) return out;
  const attributes = new DerReader(der, tlv.start, tlv.end);
  let sawExtensionRequest = false;
  while (!attributes.done) {
    const attribute = attributes.enter(attributes.expect(TAG.SEQUENCE, "attribute"));
    const type = readOid(der, attribute.expect(TAG.OID, "attribute type"));
    const valuesTlv = attribute.expect(TAG.SET, "attribute values");
    const values = attribute.enter(valuesTlv);
    attribute.expectEnd("attribute");
    if (type !== OID.extensionRequest) {
      // Other attributes (challengePassword, …) mean nothing to us, but must still be well-formed.
      checkWellFormed(der, valuesTlv.start, valuesTlv.end);
      continue;
    }
    if (sawExtensionRequest) throw malformed("more than one extensionRequest attribute");
    sawExtensionRequest = true;
    const extensions = values.expect(TAG.SEQUENCE, "extensionRequest value");
    values.expectEnd("extensionRequest (exactly one value)");
    parseExtensions(der, extensions, out);
  }
  return out;
}

function parseExtensions(der: Buffer, tlv: Tlv, out: RequestedExtensions): void {
  for (const { oid, value } of readExtensions(der, tlv)) {
    out.extensionOids.push(oid);
    if (oid === OID.subjectAltName) parseSubjectAltName(der, value, out);
    else if (oid === OID.basicConstraints) out.requestsCa = parseBasicConstraints(der, value);
  }
}

/** The single TLV an extension's OCTET STRING wraps, with nothing after it. */
function extensionContent(der: Buffer, value: Tlv, tag: number, what: string): DerReader {
  const reader = new DerReader(der, value.start, value.end);
  const inner = reader.expect(tag, what);
  reader.expectEnd(what);
  return reader.enter(inner);
}

function parseBasicConstraints(der: Buffer, value: Tlv): boolean {
  const constraints = extensionContent(der, value, TAG.SEQUENCE, "basicConstraints");
  const ca = constraints.optional(TAG.BOOLEAN, "basicConstraints.cA");
  const pathLen = constraints.optional(TAG.INTEGER, "basicConstraints.pathLenConstraint");
  if (pathLen !== undefined) checkIntegerContent(der, pathLen, "basicConstraints.pathLenConstraint");
  constraints.expectEnd("basicConstraints");
  return ca !== undefined && readBoolean(der, ca, "basicConstraints.cA");
}

// ---------------------------------------------------------------------------------------------
// Writing

const VERSION_V1 = derSmallInteger(0);
const NO_ATTRIBUTES = derConstructed(TAG.CONTEXT_CONSTRUCTED | 0, []);
const OID_EXTENSION_REQUEST = derOid(OID.extensionRequest);

/**
 * A DER CSR for the agent: subject CN only (UTF8String), SANs in an extensionRequest, signed with
 * ecdsa-with-SHA256 (P-256), ecdsa-with-SHA384 (P-384) or sha256WithRSAEncryption (RSA).
 */
export function createCsr(opts: {
  privateKey: KeyObject;
  commonName: string;
  dnsNames?: readonly string[];
  uris?: readonly string[];
  /** IPv4/IPv6 SANs (the signing server's own CSR names its addresses). */
  ipAddresses?: readonly string[];
}): Buffer {
  let signer: ReturnType<typeof signerFor>;
  try {
    signer = signerFor(opts.privateKey);
  } catch (e) {
    if (e instanceof CertificateError) {
      throw new CsrError("CSR_UNSUPPORTED_KEY", `cannot create CSR: ${e.message}`, { cause: e });
    }
    throw e;
  }
  let subject: Buffer;
  let attributes = NO_ATTRIBUTES;
  try {
    subject = encodeName({ commonName: opts.commonName });
    const dns = opts.dnsNames ?? [];
    const uris = opts.uris ?? [];
    const ips = opts.ipAddresses ?? [];
    if (dns.length > 0 || uris.length > 0 || ips.length > 0) {
      const extensions = derSequence(ext.subjectAltName({ dns, uris, ips }));
      attributes = derConstructed(TAG.CONTEXT_CONSTRUCTED | 0, [
        derSequence(OID_EXTENSION_REQUEST, derSet(extensions)),
      ]);
    }
  } catch (e) {
    if (e instanceof CertificateError) {
      throw new CsrError("CSR_MALFORMED", `cannot create CSR: ${e.message}`, { cause: e });
    }
    throw e;
  }
  const spki = createPublicKey(opts.privateKey).export({ format: "der", type: "spki" });
  const info = derSequence(VERSION_V1, subject, spki, attributes);
  const signature = sign(signer.hash, info, opts.privateKey);
  return derSequence(info, signer.algorithmIdentifier, derBitString(signature));
}
