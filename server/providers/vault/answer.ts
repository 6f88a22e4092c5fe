// Vault's answer is network input: the certificate it returns must carry exactly the public key of
// the CSR and exactly the names the server decided, be usable for the profile, and chain through
// the returned CA certificates to a root the mesh trusts. Anything else is refused, never served.

import { createPublicKey, X509Certificate } from "node:crypto";
import { decodeCertificates, encodePem } from "../../../common/pem.js";
import { ipAddressBytes } from "../../../common/x509/certificate.js";
import { type CertificateNames, readCertificateNames } from "../../../common/x509/certificate-names.js";
import type { IssueRequest } from "../provider.js";

export class VaultAnswerError extends Error {
  readonly code = "ERR_OSM_CERT_VAULT_ANSWER";
}

export interface CheckedLeaf {
  readonly leaf: X509Certificate;
  /** PEM: the leaf, then intermediates; never a self-signed root. */
  readonly chainPem: string[];
  /** The top of the chain (the root it ends at, or the last intermediate). */
  readonly anchor: X509Certificate;
}

const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

export function isSelfSigned(cert: X509Certificate): boolean {
  return cert.subject === cert.issuer && cert.checkIssued(cert) && cert.verify(cert.publicKey);
}

/** Parses `data` of a sign/ answer and checks it against the request. */
export function checkSignAnswer(data: unknown, request: IssueRequest, now = Date.now()): CheckedLeaf {
  const d = (data ?? {}) as { certificate?: unknown; ca_chain?: unknown; issuing_ca?: unknown };
  if (typeof d.certificate !== "string") throw new VaultAnswerError("the answer has no data.certificate");
  let leafDers: Buffer[];
  try {
    leafDers = decodeCertificates(d.certificate);
  } catch (error) {
    throw new VaultAnswerError(`data.certificate is not PEM: ${(error as Error).message}`);
  }
  if (leafDers.length !== 1) {
    throw new VaultAnswerError(
      `data.certificate holds ${leafDers.length} certificates; expected the leaf only (format=pem)`,
    );
  }
  const leafDer = leafDers[0] as Buffer;
  const leaf = new X509Certificate(leafDer);

  const chainPems = Array.isArray(d.ca_chain)
    ? d.ca_chain.map(String)
    : typeof d.issuing_ca === "string"
      ? [d.issuing_ca]
      : [];
  const cas = chainPems.flatMap((pem) => decodeCertificates(pem)).map((der) => new X509Certificate(der));
  if (cas.length === 0)
    throw new VaultAnswerError("the answer has neither data.ca_chain nor data.issuing_ca");

  // Key: exactly the CSR's (compared as re-encoded SPKI, so encoding variants cannot hide a swap).
  const wanted = createPublicKey({ key: request.csr.publicKey.spki, format: "der", type: "spki" }).export({
    type: "spki",
    format: "der",
  });
  if (!leaf.publicKey.export({ type: "spki", format: "der" }).equals(wanted)) {
    throw new VaultAnswerError("the certificate does not carry the CSR's public key");
  }
  if (leaf.ca) throw new VaultAnswerError("the certificate is a CA certificate");

  // Names: the subject CN and every SAN exactly as decided, nothing more, nothing less.
  let names: CertificateNames;
  try {
    names = readCertificateNames(leafDer);
  } catch (error) {
    throw new VaultAnswerError(`data.certificate is unreadable: ${(error as Error).message}`);
  }
  const cn = names.subjectCommonName;
  if (cn !== request.commonName) {
    throw new VaultAnswerError(`the certificate's CN is "${cn ?? ""}", expected "${request.commonName}"`);
  }
  const sans = {
    dns: names.san.dnsNames,
    uris: names.san.uris,
    ips: names.san.ipAddresses.map((ip) => ipAddressBytes(ip).toString("hex")),
    other: names.san.emailAddresses.length + names.san.otherSanCount,
  };
  const expectDns = new Set(request.dnsNames);
  const expectUris = new Set(request.uris);
  const expectIps = new Set(request.ipAddresses.map((ip) => ipAddressBytes(ip).toString("hex")));
  const same = (a: Set<string>, b: string[]) => a.size === new Set(b).size && b.every((x) => a.has(x));
  if (
    !same(expectDns, sans.dns) ||
    !same(expectUris, sans.uris) ||
    !same(expectIps, sans.ips) ||
    sans.other > 0
  ) {
    throw new VaultAnswerError(
      `the certificate's SANs (DNS ${JSON.stringify(sans.dns)}, URI ${JSON.stringify(sans.uris)}, ${sans.ips.length} IP, ${sans.other} other) differ from the requested ones; check the role's use_csr_sans/use_csr_common_name (should be false)`,
    );
  }

  // Usage: the EKUs the profile needs must be there (Vault's server_flag / client_flag).
  const eku = leaf.keyUsage;
  const needs =
    request.profile === "bootstrap"
      ? [CLIENT_AUTH]
      : request.profile === "service"
        ? [SERVER_AUTH, CLIENT_AUTH]
        : [SERVER_AUTH];
  if (eku !== undefined) {
    const missing = needs.filter((oid) => !eku.includes(oid));
    if (missing.length > 0) {
      throw new VaultAnswerError(
        `the certificate lacks ${missing.map((o) => (o === SERVER_AUTH ? "serverAuth" : "clientAuth")).join(" and ")}; set server_flag=true and client_flag=true on the role`,
      );
    }
  }
  if (Date.parse(leaf.validTo) <= now)
    throw new VaultAnswerError(`the certificate expired at ${leaf.validTo}`);

  // Chain: each certificate signed by the next; the chain served never includes a root.
  let child = leaf;
  for (const ca of cas) {
    if (!(child.checkIssued(ca) && child.verify(ca.publicKey))) {
      throw new VaultAnswerError(
        `"${child.subject.replace(/\n/g, ", ")}" is not signed by the next certificate of ca_chain`,
      );
    }
    child = ca;
  }
  const intermediates = cas.filter((ca) => !isSelfSigned(ca));
  return {
    leaf,
    chainPem: [
      encodePem("CERTIFICATE", leafDer),
      ...intermediates.map((c) => encodePem("CERTIFICATE", c.raw)),
    ],
    anchor: child,
  };
}
