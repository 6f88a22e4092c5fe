// Who a certificate names, read structurally from its DER: the subject's commonName and the
// subjectAltName entries by type. Authentication (server) and server verification (agent) read
// identities here and never from a display string such as X509Certificate.subjectAltName, whose
// text a crafted DNS SAN can make look like a URI SAN.

import { DerError, DerReader, TAG, type Tlv } from "./der.js";
import {
  emptyGeneralNames,
  type GeneralNames,
  parseName,
  parseSubjectAltName,
  readExtensions,
} from "./names.js";
import { OID } from "./oids.js";

export interface CertificateNames {
  /** The subject's single commonName, or null when it has none. */
  readonly subjectCommonName: string | null;
  readonly san: Readonly<GeneralNames>;
}

export class CertificateNamesError extends Error {
  readonly code = "ERR_OSM_CERT_CERTIFICATE_NAMES";
}

/** Reads a DER certificate's names. Two commonNames or two instances of an extension are refused. */
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

/** The TBSCertificate fields callers need, with the whole Certificate held to DER framing. */
export interface CertificateParts {
  readonly subject: Tlv;
  readonly spki: Tlv;
  /** The [3] EXPLICIT wrapper of the extensions, when present. */
  readonly extensions: Tlv | undefined;
}

/** Walks a DER Certificate (RFC 5280 §4.1); throws DerError when it is not one. */
export function certificateParts(der: Buffer): CertificateParts {
  const top = new DerReader(der);
  const certificate = top.enter(top.expect(TAG.SEQUENCE, "Certificate"));
  top.expectEnd("Certificate");
  const tbs = certificate.enter(certificate.expect(TAG.SEQUENCE, "tbsCertificate"));
  certificate.expect(TAG.SEQUENCE, "signatureAlgorithm");
  certificate.expect(TAG.BIT_STRING, "signatureValue");
  certificate.expectEnd("Certificate");
  tbs.optional(TAG.CONTEXT_CONSTRUCTED | 0, "tbsCertificate.version");
  tbs.expect(TAG.INTEGER, "tbsCertificate.serialNumber");
  tbs.expect(TAG.SEQUENCE, "tbsCertificate.signature");
  tbs.expect(TAG.SEQUENCE, "tbsCertificate.issuer");
  tbs.expect(TAG.SEQUENCE, "tbsCertificate.validity");
  const subject = tbs.expect(TAG.SEQUENCE, "tbsCertificate.subject");
  const spki = tbs.expect(TAG.SEQUENCE, "tbsCertificate.subjectPublicKeyInfo");
  tbs.optional(TAG.CONTEXT_PRIMITIVE | 1, "tbsCertificate.issuerUniqueID");
  tbs.optional(TAG.CONTEXT_PRIMITIVE | 2, "tbsCertificate.subjectUniqueID");
  const extensions = tbs.optional(TAG.CONTEXT_CONSTRUCTED | 3, "tbsCertificate.extensions");
  tbs.expectEnd("tbsCertificate");
  return { subject, spki, extensions };
}

function read(der: Buffer): CertificateNames {
  const { subject, extensions: extensionsTlv } = certificateParts(der);

  let subjectCommonName: string | null = null;
  for (const attribute of parseName(der, subject, "subject")) {
    if (attribute.oid !== OID.commonName) continue;
    if (subjectCommonName !== null) throw new DerError("subject has more than one commonName");
    if (!attribute.isString) throw new DerError("subject commonName is not a string");
    subjectCommonName = attribute.value;
  }

  const san = emptyGeneralNames();
  if (extensionsTlv !== undefined) {
    const wrapper = new DerReader(der, extensionsTlv.start, extensionsTlv.end);
    const sans = readExtensions(der, wrapper.expect(TAG.SEQUENCE, "extensions")).filter(
      (e) => e.oid === OID.subjectAltName,
    );
    wrapper.expectEnd("extensions");
    for (const { value } of sans) parseSubjectAltName(der, value, san);
  }
  return { subjectCommonName, san };
}
