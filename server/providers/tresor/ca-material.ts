// The three pieces Tresor keeps (DESIGN.md §7): `ca.crt`, `private.key`, `expiration`. Stores (a
// local directory, later the osm-ca-bundle Secret) only move these strings; validating them and
// making a new root happen here, once for every store.

import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { generateKeyPair, type KeyAlgorithm, privateKeyToPem } from "../../../common/keys.js";
import { decodeSinglePem, encodePem, PemError } from "../../../common/pem.js";
import {
  buildCertificate,
  encodeName,
  ext,
  keyIdentifier,
  randomSerialNumber,
  signerFor,
} from "../../../common/x509/certificate.js";

/** Exactly what a store holds: the file or Secret key contents, as text. */
export interface CaMaterial {
  readonly caCert: string;
  readonly privateKey: string;
  readonly expiration: string;
}

export class CaMaterialError extends Error {
  readonly code = "ERR_OSM_CERT_CA_MATERIAL";
}

export interface RootOptions {
  readonly keyAlgorithm: KeyAlgorithm;
  readonly commonName: string;
  readonly organization?: string;
  readonly validityMs: number;
}

export interface LoadedCa {
  readonly certificate: X509Certificate;
  readonly certificatePem: string;
  readonly certificateDer: Buffer;
  readonly privateKey: KeyObject;
}

/**
 * Roots and leaves start this long before "now", so hosts whose clocks lag the server's by up to this
 * much still accept them (Kubernetes' own CSR signer backdates 5 minutes). Ten minutes covers the
 * ±5 minutes promised with margin; 30 s was too little: an agent 5 minutes behind refused a fresh
 * root, the server's serving certificate and its own certificate as "not yet valid" and never became
 * ready (test/integration/fault-replicas.test.ts).
 */
export const CLOCK_SKEW_ALLOWANCE_MS = 10 * 60_000;

export async function generateRoot(options: RootOptions, now = new Date()): Promise<CaMaterial> {
  const { privateKey, publicKey } = await generateKeyPair(options.keyAlgorithm);
  const spki = publicKey.export({ type: "spki", format: "der" });
  const name = encodeName({ commonName: options.commonName, organization: options.organization });
  const keyId = keyIdentifier(spki);
  // Backdated like leaves, so a freshly made root is valid on hosts whose clocks run slow.
  const notBefore = new Date(now.getTime() - CLOCK_SKEW_ALLOWANCE_MS);
  const notAfter = new Date(now.getTime() + options.validityMs);
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: name,
      subject: name,
      spki,
      notBefore,
      notAfter,
      extensions: [
        ext.basicConstraints(true),
        ext.keyUsage(["keyCertSign", "cRLSign", "digitalSignature"]),
        ext.subjectKeyIdentifier(keyId),
      ],
    },
    signerFor(privateKey),
  );
  return {
    caCert: encodePem("CERTIFICATE", der),
    privateKey: privateKeyToPem(privateKey),
    // Second precision is all a certificate holds; the millisecond form matches OSM's seed shape.
    expiration: new Date(Math.floor(notAfter.getTime() / 1000) * 1000).toISOString(),
  };
}

/**
 * Parses and cross-checks stored material. Anything inconsistent stops start-up: a mesh whose root
 * silently changed would break every workload's trust at once.
 */
export function loadCa(material: CaMaterial, where: string, now = Date.now()): LoadedCa {
  let der: Buffer;
  let certificate: X509Certificate;
  try {
    der = decodeSinglePem(material.caCert, "CERTIFICATE");
    certificate = new X509Certificate(der);
  } catch (error) {
    throw new CaMaterialError(`${where}: ca.crt is not a PEM certificate (${describe(error)})`);
  }
  if (!certificate.ca)
    throw new CaMaterialError(`${where}: ca.crt is not a CA certificate (basicConstraints CA:false)`);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(material.privateKey);
  } catch (error) {
    throw new CaMaterialError(`${where}: private.key is not a PEM private key (${describe(error)})`);
  }
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new CaMaterialError(`${where}: private.key does not match the public key in ca.crt`);
  }
  const weakness = rootKeyWeakness(privateKey);
  if (weakness !== null) throw new CaMaterialError(`${where}: ${weakness}`);
  const notAfter = new Date(certificate.validTo);
  const expiration = new Date(material.expiration.trim());
  if (Number.isNaN(expiration.getTime())) {
    throw new CaMaterialError(`${where}: expiration "${material.expiration.trim()}" is not an ISO 8601 time`);
  }
  if (Math.abs(expiration.getTime() - notAfter.getTime()) >= 1000) {
    throw new CaMaterialError(
      `${where}: expiration ${expiration.toISOString()} does not match ca.crt notAfter ${notAfter.toISOString()}`,
    );
  }
  if (notAfter.getTime() <= now) {
    throw new CaMaterialError(`${where}: the root certificate expired at ${notAfter.toISOString()}`);
  }
  return { certificate, certificatePem: encodePem("CERTIFICATE", der), certificateDer: der, privateKey };
}

/**
 * A root must be at least as strong as the leaves it signs (CSR policy: RSA ≥ 2048, P-256 or P-384):
 * a weaker root is the cheapest way to forge any workload's identity.
 */
function rootKeyWeakness(key: KeyObject): string | null {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "rsa") {
    const bits = details?.modulusLength ?? 0;
    return bits >= 2048
      ? null
      : `the root key is RSA-${bits}, weaker than the RSA-2048 minimum for any key in the mesh`;
  }
  if (key.asymmetricKeyType === "ec") {
    const curve = details?.namedCurve;
    return curve === "prime256v1" || curve === "secp384r1"
      ? null
      : `the root key is on curve ${curve ?? "unknown"}; use P-256 or P-384 (or RSA ≥ 2048)`;
  }
  return `the root key type ${key.asymmetricKeyType ?? "unknown"} is not supported; use ECDSA P-256/P-384 or RSA ≥ 2048`;
}

function describe(error: unknown): string {
  if (error instanceof PemError) return error.message;
  return error instanceof Error ? (error.message.split("\n")[0] ?? "unknown error") : String(error);
}
