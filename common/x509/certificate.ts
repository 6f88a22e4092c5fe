// Certificates written by hand on the signing hot path (DESIGN.md §12): constant parts are encoded
// once at load, a certificate costs a handful of small allocations and one native crypto.sign.
// Correctness is pinned by tests against @peculiar/x509, node's X509Certificate and `openssl verify`.

import { createHash, type KeyObject, randomBytes, sign } from "node:crypto";
import { isIPv4, isIPv6 } from "node:net";
import { certificateParts } from "./certificate-names.js";
import {
  DerError,
  DerReader,
  derBitString,
  derBoolean,
  derConstructed,
  derExplicit,
  derImplicitPrimitive,
  derInteger,
  derNull,
  derOctetString,
  derOid,
  derSequence,
  derSet,
  derSmallInteger,
  derUtcOrGeneralizedTime,
  derUtf8String,
  encodingOf,
  readBitString,
  readTlv,
  TAG,
} from "./der.js";
import { OID } from "./oids.js";

export class CertificateError extends Error {
  readonly code = "ERR_OSM_CERT_X509";
}

export interface CertificateSigner {
  /** The CA private key. */
  readonly key: KeyObject;
  readonly hash: "sha256" | "sha384";
  /** DER AlgorithmIdentifier, written into both TBSCertificate.signature and Certificate.signatureAlgorithm. */
  readonly algorithmIdentifier: Buffer;
}

// RFC 5758 §3.2: ECDSA AlgorithmIdentifiers have no parameters; RFC 4055 §5: RSA ones carry NULL.
const ALG_ECDSA_SHA256 = derSequence(derOid(OID.ecdsaWithSha256));
const ALG_ECDSA_SHA384 = derSequence(derOid(OID.ecdsaWithSha384));
const ALG_RSA_SHA256 = derSequence(derOid(OID.sha256WithRsaEncryption), derNull());

const signers = new WeakMap<KeyObject, CertificateSigner>();

/** How a CA key signs: P-256 → ecdsa-with-SHA256, P-384 → ecdsa-with-SHA384, RSA → sha256WithRSAEncryption. */
export function signerFor(caPrivateKey: KeyObject): CertificateSigner {
  const cached = signers.get(caPrivateKey);
  if (cached !== undefined) return cached;
  if (caPrivateKey.type !== "private") {
    throw new CertificateError(`a signing key must be private, got a ${caPrivateKey.type} key`);
  }
  let signer: CertificateSigner;
  const type = caPrivateKey.asymmetricKeyType;
  if (type === "ec") {
    const curve = caPrivateKey.asymmetricKeyDetails?.namedCurve;
    if (curve === "prime256v1") {
      signer = { key: caPrivateKey, hash: "sha256", algorithmIdentifier: ALG_ECDSA_SHA256 };
    } else if (curve === "secp384r1") {
      signer = { key: caPrivateKey, hash: "sha384", algorithmIdentifier: ALG_ECDSA_SHA384 };
    } else {
      throw new CertificateError(
        `EC signing keys must be on P-256 or P-384, got curve ${curve ?? "unknown"}`,
      );
    }
  } else if (type === "rsa") {
    signer = { key: caPrivateKey, hash: "sha256", algorithmIdentifier: ALG_RSA_SHA256 };
  } else {
    throw new CertificateError(
      `unsupported signing key type ${type ?? "unknown"}: use ECDSA P-256/P-384 or RSA`,
    );
  }
  signers.set(caPrivateKey, signer);
  return signer;
}

const OID_CN = derOid(OID.commonName);
const OID_O = derOid(OID.organizationName);

/** A Name of [O,] CN — most general first, as OSM (Go's pkix.Name) writes it — with UTF8String values. */
export function encodeName(attrs: { commonName: string; organization?: string }): Buffer {
  if (attrs.commonName.length === 0) {
    throw new CertificateError("a certificate name needs a non-empty commonName");
  }
  const cn = derSet(derSequence(OID_CN, derUtf8String(attrs.commonName)));
  if (attrs.organization === undefined) return derSequence(cn);
  if (attrs.organization.length === 0) {
    throw new CertificateError("organization must not be empty when given");
  }
  return derSequence(derSet(derSequence(OID_O, derUtf8String(attrs.organization))), cn);
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 over the subjectPublicKey BIT STRING's value (no tag, length or unused-bits octet). */
export function keyIdentifier(spki: Buffer): Buffer {
  try {
    const top = new DerReader(spki);
    const seq = top.expect(TAG.SEQUENCE, "SubjectPublicKeyInfo");
    top.expectEnd("SubjectPublicKeyInfo");
    const r = top.enter(seq);
    r.expect(TAG.SEQUENCE, "SubjectPublicKeyInfo.algorithm");
    const key = readBitString(spki, r.read("SubjectPublicKeyInfo.subjectPublicKey"), "subjectPublicKey");
    r.expectEnd("SubjectPublicKeyInfo");
    return createHash("sha1").update(key.bytes).digest();
  } catch (e) {
    throw asCertificateError(e, "SubjectPublicKeyInfo");
  }
}

// One CSPRNG call per 256 serials instead of one each: a small randomBytes() costs about as much
// as building the rest of the certificate. Each refill is a fresh buffer, so serials never alias.
const SERIAL_BYTES = 16;
const SERIAL_POOL_SIZE = SERIAL_BYTES * 256;
let serialPool = Buffer.alloc(0);
let serialPoolOffset = 0;

/**
 * 16 CSPRNG bytes with the top bit cleared (positive) and the next one set (non-zero, and always
 * exactly 16 octets, so minimal DER): 126 bits of entropy, above the CA/B Forum's 64.
 */
export function randomSerialNumber(): Buffer {
  if (serialPoolOffset + SERIAL_BYTES > serialPool.length) {
    serialPool = randomBytes(SERIAL_POOL_SIZE);
    serialPoolOffset = 0;
  }
  const serial = serialPool.subarray(serialPoolOffset, serialPoolOffset + SERIAL_BYTES);
  serialPoolOffset += SERIAL_BYTES;
  serial[0] = ((serial[0] as number) & 0x7f) | 0x40;
  return serial;
}

// ---------------------------------------------------------------------------------------------
// Extensions. Each returns one DER Extension; the combinations a server uses per request are
// memoised, so the hot path mostly copies constant bytes.

const OID_BASIC_CONSTRAINTS = derOid(OID.basicConstraints);
const OID_KEY_USAGE = derOid(OID.keyUsage);
const OID_EXT_KEY_USAGE = derOid(OID.extKeyUsage);
const OID_SAN = derOid(OID.subjectAltName);
const OID_SKI = derOid(OID.subjectKeyIdentifier);
const OID_AKI = derOid(OID.authorityKeyIdentifier);
const CRITICAL = derBoolean(true);

function extension(oid: Buffer, critical: boolean, value: Buffer): Buffer {
  return critical
    ? derSequence(oid, CRITICAL, derOctetString(value))
    : derSequence(oid, derOctetString(value));
}

type KeyUsageName = "digitalSignature" | "keyEncipherment" | "keyCertSign" | "cRLSign";
type ExtKeyUsageName = "serverAuth" | "clientAuth";

// RFC 5280 §4.2.1.3 bit positions.
const KEY_USAGE_BIT: Readonly<Record<KeyUsageName, number>> = {
  digitalSignature: 0,
  keyEncipherment: 2,
  keyCertSign: 5,
  cRLSign: 6,
};
const EKU_OID: Readonly<Record<ExtKeyUsageName, string>> = {
  serverAuth: OID.serverAuth,
  clientAuth: OID.clientAuth,
};

const memo = new Map<string, Buffer>();

function memoised(key: string, build: () => Buffer): Buffer {
  let value = memo.get(key);
  if (value === undefined) {
    value = build();
    memo.set(key, value);
  }
  return value;
}

let lastAuthorityKeyId: Buffer | undefined;
let lastAuthorityExtension: Buffer | undefined;

function ia5(text: string, what: string): Buffer {
  if (text.length === 0) throw new CertificateError(`${what} must not be empty`);
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) > 0x7f) throw new CertificateError(`${what} "${text}" must be ASCII (IA5String)`);
  }
  return Buffer.from(text, "latin1");
}

export const ext = {
  /** Critical. `pathLen` only makes sense on a CA. */
  basicConstraints(ca: boolean, pathLen?: number): Buffer {
    if (pathLen !== undefined && (!ca || !Number.isSafeInteger(pathLen) || pathLen < 0)) {
      throw new CertificateError(
        `basicConstraints pathLen ${pathLen} needs cA true and a non-negative integer`,
      );
    }
    return memoised(`bc:${ca}:${pathLen}`, () => {
      const parts: Buffer[] = [];
      // DER omits a BOOLEAN equal to its DEFAULT (cA FALSE).
      if (ca) parts.push(derBoolean(true));
      if (pathLen !== undefined) parts.push(derSmallInteger(pathLen));
      return extension(OID_BASIC_CONSTRAINTS, true, derConstructed(TAG.SEQUENCE, parts));
    });
  },

  /** Critical, as RFC 5280 §4.2.1.3 recommends. */
  keyUsage(usages: readonly KeyUsageName[]): Buffer {
    if (usages.length === 0) throw new CertificateError("keyUsage needs at least one usage");
    return memoised(`ku:${usages.join(",")}`, () => {
      let bits = 0;
      for (const usage of usages) {
        const bit = KEY_USAGE_BIT[usage];
        if (bit === undefined) throw new CertificateError(`unknown key usage "${usage}"`);
        bits |= 0x80 >> bit;
      }
      // A named BIT STRING in DER drops trailing zero bits (X.690 §11.2.2).
      let unused = 0;
      while (((bits >> unused) & 1) === 0) unused++;
      return extension(OID_KEY_USAGE, true, derBitString(Buffer.from([bits]), unused));
    });
  },

  extKeyUsage(usages: readonly ExtKeyUsageName[]): Buffer {
    if (usages.length === 0) throw new CertificateError("extKeyUsage needs at least one usage");
    return memoised(`eku:${usages.join(",")}`, () => {
      const oids = usages.map((usage) => {
        const oid = EKU_OID[usage];
        if (oid === undefined) throw new CertificateError(`unknown extended key usage "${usage}"`);
        return derOid(oid);
      });
      return extension(OID_EXT_KEY_USAGE, false, derConstructed(TAG.SEQUENCE, oids));
    });
  },

  /** DNS names, then URIs, then IP addresses (IPv4 and IPv6), in the order given. */
  subjectAltName(names: {
    dns?: readonly string[];
    uris?: readonly string[];
    ips?: readonly string[];
  }): Buffer {
    const parts: Buffer[] = [];
    for (const dns of names.dns ?? []) parts.push(derImplicitPrimitive(2, ia5(dns, "DNS SAN")));
    for (const uri of names.uris ?? []) parts.push(derImplicitPrimitive(6, ia5(uri, "URI SAN")));
    for (const ip of names.ips ?? []) parts.push(derImplicitPrimitive(7, ipAddressBytes(ip)));
    // RFC 5280 §4.2.1.6: GeneralNames is SIZE (1..MAX).
    if (parts.length === 0) throw new CertificateError("subjectAltName needs at least one name");
    return extension(OID_SAN, false, derConstructed(TAG.SEQUENCE, parts));
  },

  subjectKeyIdentifier(keyId: Buffer): Buffer {
    if (keyId.length === 0) throw new CertificateError("a key identifier must not be empty");
    return extension(OID_SKI, false, derOctetString(keyId));
  },

  /** The keyIdentifier form only; the issuer's key is all a verifier needs to build the chain. */
  authorityKeyIdentifier(keyId: Buffer): Buffer {
    if (keyId.length === 0) throw new CertificateError("a key identifier must not be empty");
    // Every leaf of one CA carries the same AKI; remembering the last one makes it free per request.
    if (
      lastAuthorityExtension !== undefined &&
      lastAuthorityKeyId !== undefined &&
      keyId.equals(lastAuthorityKeyId)
    ) {
      return lastAuthorityExtension;
    }
    const value = extension(OID_AKI, false, derSequence(derImplicitPrimitive(0, keyId)));
    lastAuthorityKeyId = Buffer.from(keyId);
    lastAuthorityExtension = value;
    return value;
  },
};

/** IPv4 or IPv6 text as the 4 or 16 octets of a SAN iPAddress. */
export function ipAddressBytes(ip: string): Buffer {
  if (isIPv4(ip)) return Buffer.from(ip.split(".").map(Number));
  // Zone identifiers ("fe80::1%eth0") name a local interface, not an address a peer could present.
  if (!isIPv6(ip) || ip.includes("%")) throw new CertificateError(`"${ip}" is not an IPv4 or IPv6 address`);
  const out = Buffer.alloc(16);
  let text = ip;
  let v4: Buffer | undefined;
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".", lastColon)) {
    // An embedded IPv4 tail ("::ffff:10.0.0.1") is the last 32 bits; parse the rest with "0:0" in its place.
    v4 = ipAddressBytes(text.slice(lastColon + 1));
    text = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const gap = text.indexOf("::");
  const split = (part: string): string[] => (part === "" ? [] : part.split(":"));
  const head = gap === -1 ? text.split(":") : split(text.slice(0, gap));
  const rest = gap === -1 ? [] : split(text.slice(gap + 2));
  const groups = [...head, ...new Array<string>(8 - head.length - rest.length).fill("0"), ...rest];
  for (let i = 0; i < 8; i++) out.writeUInt16BE(Number.parseInt(groups[i] as string, 16), i * 2);
  if (v4 !== undefined) v4.copy(out, 12);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The certificate itself

export interface CertificateFields {
  /** Unsigned big-endian magnitude (randomSerialNumber()). */
  serialNumber: Buffer;
  /** Name DER. */
  issuer: Buffer;
  /** Name DER. */
  subject: Buffer;
  /** SubjectPublicKeyInfo DER, as received (ParsedCsr.publicKey.spki). */
  spki: Buffer;
  notBefore: Date;
  notAfter: Date;
  extensions: readonly Buffer[];
}

const VERSION_V3 = derExplicit(0, derSmallInteger(2));

function checkSingleSequence(der: Buffer, what: string): void {
  let ok = false;
  try {
    const tlv = readTlv(der, 0);
    ok = tlv.tag === TAG.SEQUENCE && tlv.end === der.length;
  } catch {
    ok = false;
  }
  if (!ok) throw new CertificateError(`${what} must be exactly one DER SEQUENCE`);
}

/** A complete v3 Certificate DER, signed by `signer`. */
export function buildCertificate(fields: CertificateFields, signer: CertificateSigner): Buffer {
  const serial = derInteger(fields.serialNumber);
  // RFC 5280 §4.1.2.2: positive, and at most 20 octets.
  if (serial.length - 2 > 20) throw new CertificateError("serialNumber must be at most 20 octets");
  if (serial.length === 3 && serial[2] === 0) throw new CertificateError("serialNumber must not be zero");
  checkSingleSequence(fields.issuer, "issuer");
  checkSingleSequence(fields.subject, "subject");
  checkSingleSequence(fields.spki, "spki");
  if (!(fields.notAfter.getTime() > fields.notBefore.getTime())) {
    throw new CertificateError("notAfter must be later than notBefore");
  }
  let validity: Buffer;
  try {
    validity = derSequence(
      derUtcOrGeneralizedTime(fields.notBefore),
      derUtcOrGeneralizedTime(fields.notAfter),
    );
  } catch (e) {
    throw asCertificateError(e, "validity");
  }
  const parts = [
    VERSION_V3,
    serial,
    signer.algorithmIdentifier,
    fields.issuer,
    validity,
    fields.subject,
    fields.spki,
  ];
  if (fields.extensions.length > 0) {
    parts.push(derExplicit(3, derConstructed(TAG.SEQUENCE, fields.extensions)));
  }
  const tbs = derConstructed(TAG.SEQUENCE, parts);
  const signature = sign(signer.hash, tbs, signer.key);
  return derSequence(tbs, signer.algorithmIdentifier, derBitString(signature));
}

function tbsFields(certDer: Buffer): { subject: Buffer; spki: Buffer } {
  try {
    const { subject, spki } = certificateParts(certDer);
    return { subject: encodingOf(certDer, subject), spki: encodingOf(certDer, spki) };
  } catch (e) {
    throw asCertificateError(e, "certificate");
  }
}

/** The raw subject Name of a certificate — byte-for-byte what its children must carry as issuer. */
export function certificateSubjectDer(certDer: Buffer): Buffer {
  return Buffer.from(tbsFields(certDer).subject);
}

/** The raw SubjectPublicKeyInfo of a certificate. */
export function certificateSpkiDer(certDer: Buffer): Buffer {
  return Buffer.from(tbsFields(certDer).spki);
}

function asCertificateError(e: unknown, what: string): Error {
  if (e instanceof DerError) return new CertificateError(`malformed ${what}: ${e.message}`, { cause: e });
  return e instanceof Error ? e : new CertificateError(String(e));
}
