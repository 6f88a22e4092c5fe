// Test PKI made at test time with the product's own Tresor code: a CA in a temp directory and
// certificates of every kind, including ones no real server would issue (expired, foreign).

import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootstrapCommonName, type ServiceIdentity } from "../../common/identity.js";
import { generateKeyPair, type KeyAlgorithm, privateKeyToPem } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import {
  buildCertificate,
  certificateSubjectDer,
  encodeName,
  ext,
  keyIdentifier,
  randomSerialNumber,
  signerFor,
} from "../../common/x509/certificate.js";
import { createCsr, parseCsrDer } from "../../common/x509/csr.js";
import type { CertificateProfile } from "../../server/providers/provider.js";
import { DirectoryCaStore } from "../../server/providers/tresor/directory-store.js";
import { TresorProvider } from "../../server/providers/tresor/tresor.js";

export interface KeyedCert {
  readonly certPem: string;
  readonly keyPem: string;
}

export async function tempDir(
  prefix = "osm-cert-test-",
): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

export async function openTestCa(
  caDir: string,
  keyAlgorithm: KeyAlgorithm = "ecdsa-p256",
): Promise<TresorProvider> {
  return TresorProvider.open({
    store: new DirectoryCaStore(caDir),
    root: { keyAlgorithm, commonName: "osm.root", validityMs: 10 * 365 * 86_400_000 },
  });
}

export async function issueWithCa(
  ca: TresorProvider,
  profile: CertificateProfile,
  names: { commonName: string; dnsNames?: string[]; uris?: string[] },
  validityMs = 3_600_000,
): Promise<KeyedCert> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const csr = createCsr({ privateKey, commonName: names.commonName });
  const issued = ca.issueSync({
    csrPem: encodePem("CERTIFICATE REQUEST", csr),
    csr: parseCsrDer(csr),
    profile,
    commonName: names.commonName,
    dnsNames: names.dnsNames ?? [],
    uris: names.uris ?? [],
    ipAddresses: [],
    validityMs,
  });
  return { certPem: issued.chainPem.join(""), keyPem: privateKeyToPem(privateKey) };
}

export async function bootstrapCert(
  ca: TresorProvider,
  identity: ServiceIdentity,
  podUid = randomUUID(),
): Promise<KeyedCert> {
  return await issueWithCa(ca, "bootstrap", { commonName: bootstrapCommonName(podUid, identity) });
}

/** A client cert signed by the real CA key whose validity ended an hour ago. */
export async function expiredBootstrapCert(
  ca: TresorProvider,
  identity: ServiceIdentity,
): Promise<KeyedCert> {
  const { privateKey, publicKey } = await generateKeyPair("ecdsa-p256");
  const spki = publicKey.export({ type: "spki", format: "der" });
  const now = Date.now();
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: certificateSubjectDer(ca.ca.certificateDer),
      subject: encodeName({ commonName: bootstrapCommonName(randomUUID(), identity) }),
      spki,
      notBefore: new Date(now - 7_200_000),
      notAfter: new Date(now - 3_600_000),
      extensions: [
        ext.basicConstraints(false),
        ext.keyUsage(["digitalSignature"]),
        ext.extKeyUsage(["clientAuth"]),
        ext.subjectKeyIdentifier(keyIdentifier(spki)),
      ],
    },
    signerFor(ca.ca.privateKey),
  );
  return { certPem: encodePem("CERTIFICATE", der), keyPem: privateKeyToPem(privateKey) };
}

/**
 * A PEM CSR an agent of `serviceAccount.namespace` would send: its service-cert name as CN and DNS
 * SAN, its SPIFFE ID as URI SAN, a fresh P-256 key. `commonName` replaces only the CN.
 */
export async function serviceCsrPem(
  serviceAccount: string,
  namespace: string,
  options: { commonName?: string; trustDomain?: string } = {},
): Promise<string> {
  const trustDomain = options.trustDomain ?? "cluster.local";
  const name = `${serviceAccount}.${namespace}.${trustDomain}`;
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  return encodePem(
    "CERTIFICATE REQUEST",
    createCsr({
      privateKey,
      commonName: options.commonName ?? name,
      dnsNames: [name],
      uris: [`spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`],
    }),
  );
}
