// Who a certificate names, read structurally from its DER: the subject's commonName and the
// subjectAltName entries by type. Authentication (server) and server verification (agent) read
// identities here and never from a display string such as X509Certificate.subjectAltName, whose
// text a crafted DNS SAN can make look like a URI SAN.

import { DerError, DerReader, readBoolean, readOid, TAG } from "./der.js";
import { emptyGeneralNames, type GeneralNames, parseName, parseSubjectAltName } from "./names.js";
import { OID } from "./oids.js";

export interface CertificateNames {
  /** The subject's single commonName, or null when it has none. */
  readonly subjectCommonName: string | null;
  readonly san: Readonly<GeneralNames>;
}

export class CertificateNamesError extends Error {
  readonly code = "ERR_OSM_CERT_CERTIFICATE_NAMES";
}

/** Reads a DER certificate's names. Two commonNames or two subjectAltName extensions are refused. */
export function readCertificateNames(der: Buffer): CertificateNames {
  try {
    return read(der);
  } catch (error) {
    if (error instanceof DerError) {
      throw new CertificateNamesError(`malformed certificate: ${error.message}`, { cause: error });
    }
    throw error;
  }
}

function read(der: Buffer): CertificateNames {
  const top = new DerReader(der);
  const certificate = top.enter(top.expect(TAG.SEQUENCE, "Certificate"));
  top.expectEnd("Certificate");
  const tbs = certificate.enter(certificate.expect(TAG.SEQUENCE, "tbsCertificate"));
  tbs.optional(TAG.CONTEXT_CONSTRUCTED | 0, "tbsCertificate.version");
  tbs.expect(TAG.INTEGER, "tbsCertificate.serialNumber");
  tbs.expect(TAG.SEQUENCE, "tbsCertificate.signature");
  tbs.expect(TAG.SEQUENCE, "tbsCertificate.issuer");
  tbs.expect(TAG.SEQUENCE, "tbsCertificate.validity");
  const subject = tbs.expect(TAG.SEQUENCE, "tbsCertificate.subject");
  tbs.expect(TAG.SEQUENCE, "tbsCertificate.subjectPublicKeyInfo");
  tbs.optional(TAG.CONTEXT_PRIMITIVE | 1, "tbsCertificate.issuerUniqueID");
  tbs.optional(TAG.CONTEXT_PRIMITIVE | 2, "tbsCertificate.subjectUniqueID");
  const extensionsTlv = tbs.optional(TAG.CONTEXT_CONSTRUCTED | 3, "tbsCertificate.extensions");
  tbs.expectEnd("tbsCertificate");

  let subjectCommonName: string | null = null;
  for (const attribute of parseName(der, subject, "subject")) {
    if (attribute.oid !== OID.commonName) continue;
    if (subjectCommonName !== null) throw new DerError("subject has more than one commonName");
    if (!attribute.isString) throw new DerError("subject commonName is not a string");
    subjectCommonName = attribute.value;
  }

  const san = emptyGeneralNames();
  if (extensionsTlv !== undefined) {
    const wrapper = tbs.enter(extensionsTlv);
    const extensions = wrapper.enter(wrapper.expect(TAG.SEQUENCE, "extensions"));
    wrapper.expectEnd("extensions");
    let sawSan = false;
    while (!extensions.done) {
      const extension = extensions.enter(extensions.expect(TAG.SEQUENCE, "extension"));
      const oid = readOid(der, extension.expect(TAG.OID, "extnID"));
      const critical = extension.optional(TAG.BOOLEAN, "extension critical");
      if (critical !== undefined) readBoolean(der, critical, "extension critical");
      const value = extension.expect(TAG.OCTET_STRING, "extnValue");
      extension.expectEnd("extension");
      if (oid !== OID.subjectAltName) continue;
      if (sawSan) throw new DerError("more than one subjectAltName extension");
      sawSan = true;
      parseSubjectAltName(der, value, san);
    }
  }
  return { subjectCommonName, san };
}
