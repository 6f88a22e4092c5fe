// What cert-manager hands back is checked before anyone gets it: an issuer may rewrite subjects,
// add names, sign another key, or chain to a CA the mesh does not trust. The chain is returned
// leaf first without the root, whichever way the issuer laid it out.

import { X509Certificate } from "node:crypto";
import { decodeCertificates, encodePem } from "../../../common/pem.js";
import { ipAddressBytes } from "../../../common/x509/certificate.js";
import { readCertificateNames } from "../../../common/x509/certificate-names.js";
import type { IssueRequest } from "../provider.js";

export class ChainCheckError extends Error {
  readonly code = "ERR_OSM_CERT_CERT_MANAGER_CHAIN";
}

export interface CheckedChain {
  readonly chainPem: string[];
  readonly leaf: X509Certificate;
}

const sameSet = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && [...a].sort().every((v, i) => v === [...b].sort()[i]);

export function checkIssuedChain(
  certificatePem: string,
  request: IssueRequest,
  roots: readonly X509Certificate[],
): CheckedChain {
  let ders: Buffer[];
  try {
    ders = decodeCertificates(certificatePem);
  } catch (error) {
    throw new ChainCheckError(`status.certificate is not PEM certificates: ${(error as Error).message}`);
  }
  if (ders.length === 0) throw new ChainCheckError("status.certificate holds no certificate");
  const certs = ders.map((der) => new X509Certificate(der));
  const isRoot = (cert: X509Certificate) => roots.some((root) => root.raw.equals(cert.raw));
  // Issuers that append the root (some do) get it dropped: agents take the root from the bundle.
  while (certs.length > 1 && isRoot(certs[certs.length - 1] as X509Certificate)) certs.pop();
  const leaf = certs[0] as X509Certificate;
  if (leaf.ca) throw new ChainCheckError("the issued certificate is a CA certificate");

  const leafSpki = leaf.publicKey.export({ type: "spki", format: "der" });
  if (!leafSpki.equals(request.csr.publicKey.spki)) {
    throw new ChainCheckError("the issued certificate certifies another public key than the CSR's");
  }
  const names = readCertificateNames(leaf.raw);
  const ipHex = (ips: readonly string[]) => ips.map((ip) => ipAddressBytes(ip).toString("hex"));
  const problems: string[] = [];
  if (names.subjectCommonName !== null && names.subjectCommonName !== request.commonName)
    problems.push(
      `CN ${JSON.stringify(names.subjectCommonName)} instead of ${JSON.stringify(request.commonName)}`,
    );
  if (!sameSet(names.san.dnsNames, request.dnsNames))
    problems.push(`DNS names [${names.san.dnsNames.join(", ")}] instead of [${request.dnsNames.join(", ")}]`);
  if (!sameSet(names.san.uris, request.uris))
    problems.push(`URIs [${names.san.uris.join(", ")}] instead of [${request.uris.join(", ")}]`);
  if (!sameSet(ipHex(names.san.ipAddresses), ipHex(request.ipAddresses)))
    problems.push(
      `IP addresses [${names.san.ipAddresses.join(", ")}] instead of [${request.ipAddresses.join(", ")}]`,
    );
  if (names.san.emailAddresses.length > 0 || names.san.otherSanCount > 0) problems.push("extra SAN entries");
  if (problems.length > 0) throw new ChainCheckError(`the issued certificate names ${problems.join("; ")}`);

  // Each certificate must be signed by the next; the last by a root of the bundle.
  for (let i = 0; i < certs.length - 1; i++) {
    const child = certs[i] as X509Certificate;
    const parent = certs[i + 1] as X509Certificate;
    if (!child.checkIssued(parent) || !child.verify(parent.publicKey))
      throw new ChainCheckError(
        `certificate ${i} of status.certificate is not signed by certificate ${i + 1}`,
      );
  }
  const top = certs[certs.length - 1] as X509Certificate;
  if (!roots.some((root) => top.checkIssued(root) && top.verify(root.publicKey))) {
    throw new ChainCheckError(
      "the issued chain does not lead to any root in ca.crt of the CA bundle Secret: does the Secret hold the issuer's CA?",
    );
  }
  return { chainPem: certs.map((cert) => encodePem("CERTIFICATE", cert.raw)), leaf };
}
