// Extensions for each certificate kind (DESIGN.md §3). Every backend that builds certificates
// itself uses this table; backends that forward a CSR (Vault, cert-manager) map it to their options.

import { ext } from "../../common/x509/certificate.js";
import type { CertificateProfile } from "./provider.js";

type KeyUsage = "digitalSignature" | "keyEncipherment";
type ExtendedKeyUsage = "serverAuth" | "clientAuth";

export interface ProfileUsages {
  readonly keyUsage: readonly KeyUsage[];
  readonly extKeyUsage: readonly ExtendedKeyUsage[];
}

export const PROFILE_USAGES: Readonly<Record<CertificateProfile, ProfileUsages>> = {
  service: { keyUsage: ["digitalSignature", "keyEncipherment"], extKeyUsage: ["serverAuth", "clientAuth"] },
  bootstrap: { keyUsage: ["digitalSignature", "keyEncipherment"], extKeyUsage: ["clientAuth"] },
  webhook: { keyUsage: ["digitalSignature", "keyEncipherment"], extKeyUsage: ["serverAuth"] },
  server: { keyUsage: ["digitalSignature", "keyEncipherment"], extKeyUsage: ["serverAuth"] },
};

// Encoded once: these never vary per request and sit on the signing hot path.
const CONSTANT_EXTENSIONS: Readonly<Record<CertificateProfile, readonly Buffer[]>> = Object.fromEntries(
  Object.entries(PROFILE_USAGES).map(([profile, usages]) => [
    profile,
    [ext.basicConstraints(false), ext.keyUsage(usages.keyUsage), ext.extKeyUsage(usages.extKeyUsage)],
  ]),
) as unknown as Record<CertificateProfile, readonly Buffer[]>;

export function leafExtensions(
  profile: CertificateProfile,
  names: { dns: readonly string[]; uris: readonly string[]; ips: readonly string[] },
  subjectKeyId: Buffer,
  authorityKeyId: Buffer,
): Buffer[] {
  const extensions = [
    ...CONSTANT_EXTENSIONS[profile],
    ext.subjectKeyIdentifier(subjectKeyId),
    ext.authorityKeyIdentifier(authorityKeyId),
  ];
  if (names.dns.length + names.uris.length + names.ips.length > 0) {
    extensions.push(ext.subjectAltName(names));
  }
  return extensions;
}
