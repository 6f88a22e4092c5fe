// The agent's trust: the mesh roots it holds. They verify the signing server (TLS) and every
// certificate the server returns, and they are what Envoy gets as ROOTCA. They change only through
// a bundle from the authenticated signing server (WatchTrustBundle or a CreateCertificate answer),
// after the checks below; both paths come through here so the two can never disagree.

import { X509Certificate } from "node:crypto";
import { decodeCertificates } from "../common/pem.js";
import type { MutableCertificateProvider } from "../common/tls-material.js";
import type { SecretCache } from "./secret-cache.js";

/** Refuses a bundle that holds anything but readable CA certificates. */
export function checkTrustBundle(pem: string): X509Certificate[] {
  const roots = decodeCertificates(pem).map((der) => new X509Certificate(der));
  if (roots.length === 0) throw new Error("trust bundle holds no certificate");
  const notCa = roots.find((root) => !root.ca);
  if (notCa !== undefined) {
    throw new Error(`trust bundle entry ${notCa.serialNumber} is not a CA certificate`);
  }
  return roots;
}

export class AgentTrust {
  private roots: X509Certificate[];

  constructor(
    private readonly cache: SecretCache,
    private readonly tls: MutableCertificateProvider,
    initialPem: string,
  ) {
    this.roots = checkTrustBundle(initialPem);
    cache.setTrustBundle(initialPem);
    tls.setCaCertificates(initialPem);
  }

  /** Adopts a bundle from the authenticated server; returns false when it equals the one held. */
  adopt(pem: string): boolean {
    if (pem === this.cache.snapshot().trustBundlePem) return false;
    this.roots = checkTrustBundle(pem);
    this.cache.setTrustBundle(pem);
    this.tls.setCaCertificates(pem);
    return true;
  }

  /** Whether `chain` (leaf first) is signed link by link up to one of the roots held now. */
  verifies(chain: readonly X509Certificate[]): boolean {
    for (let i = 0; i + 1 < chain.length; i++) {
      const child = chain[i] as X509Certificate;
      const parent = chain[i + 1] as X509Certificate;
      if (!parent.ca || !child.checkIssued(parent) || !child.verify(parent.publicKey)) return false;
    }
    const top = chain[chain.length - 1];
    if (top === undefined) return false;
    return this.roots.some((root) => top.checkIssued(root) && top.verify(root.publicKey));
  }
}
