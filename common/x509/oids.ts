// The object identifiers our X.509 code reads and writes, in dotted form. Names follow the RFCs
// (RFC 5280, 5480, 5758, 4055, 8410, 2985) so a reader can grep a spec for them.

export const OID = {
  // Public key algorithms and curves (RFC 5480, RFC 3279, RFC 8410).
  ecPublicKey: "1.2.840.10045.2.1",
  prime256v1: "1.2.840.10045.3.1.7",
  secp384r1: "1.3.132.0.34",
  secp521r1: "1.3.132.0.35",
  rsaEncryption: "1.2.840.113549.1.1.1",
  rsassaPss: "1.2.840.113549.1.1.10",
  ed25519: "1.3.101.112",
  ed448: "1.3.101.113",
  x25519: "1.3.101.110",
  x448: "1.3.101.111",
  dsa: "1.2.840.10040.4.1",
  dhPublicNumber: "1.2.840.10046.2.1",

  // Signature algorithms (RFC 5758, RFC 4055).
  ecdsaWithSha1: "1.2.840.10045.4.1",
  ecdsaWithSha224: "1.2.840.10045.4.3.1",
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  ecdsaWithSha384: "1.2.840.10045.4.3.3",
  ecdsaWithSha512: "1.2.840.10045.4.3.4",
  md5WithRsaEncryption: "1.2.840.113549.1.1.4",
  sha1WithRsaEncryption: "1.2.840.113549.1.1.5",
  sha224WithRsaEncryption: "1.2.840.113549.1.1.14",
  sha256WithRsaEncryption: "1.2.840.113549.1.1.11",
  sha384WithRsaEncryption: "1.2.840.113549.1.1.12",
  sha512WithRsaEncryption: "1.2.840.113549.1.1.13",
  dsaWithSha256: "2.16.840.1.101.3.4.3.2",

  // Name attributes (X.520) and PKCS#9 attributes.
  commonName: "2.5.4.3",
  organizationName: "2.5.4.10",
  extensionRequest: "1.2.840.113549.1.9.14",

  // Certificate extensions (RFC 5280 §4.2).
  subjectKeyIdentifier: "2.5.29.14",
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  authorityKeyIdentifier: "2.5.29.35",
  extKeyUsage: "2.5.29.37",

  // Extended key usages (RFC 5280 §4.2.1.12).
  serverAuth: "1.3.6.1.5.5.7.3.1",
  clientAuth: "1.3.6.1.5.5.7.3.2",
} as const;

export type KnownOidName = keyof typeof OID;

const NAME_BY_OID: ReadonlyMap<string, string> = new Map(
  Object.entries(OID).map(([name, oid]) => [oid, name]),
);

/**
 * Named curves smaller than P-256, with their field size. DESIGN.md §9 calls these weak keys (a
 * distinct, actionable error), unlike curves of adequate size that we merely do not support. The
 * list is OpenSSL's `ecparam -list_curves`, filtered to < 256 bits.
 */
export const WEAK_CURVES: ReadonlyMap<string, { readonly name: string; readonly bits: number }> = new Map(
  (
    [
      ["1.3.132.0.6", "secp112r1", 112],
      ["1.3.132.0.7", "secp112r2", 112],
      ["1.3.132.0.28", "secp128r1", 128],
      ["1.3.132.0.29", "secp128r2", 128],
      ["1.3.132.0.9", "secp160k1", 160],
      ["1.3.132.0.8", "secp160r1", 160],
      ["1.3.132.0.30", "secp160r2", 160],
      ["1.3.132.0.31", "secp192k1", 192],
      ["1.3.132.0.32", "secp224k1", 224],
      ["1.3.132.0.33", "secp224r1", 224],
      ["1.2.840.10045.3.1.1", "prime192v1", 192],
      ["1.2.840.10045.3.1.2", "prime192v2", 192],
      ["1.2.840.10045.3.1.3", "prime192v3", 192],
      ["1.2.840.10045.3.1.4", "prime239v1", 239],
      ["1.2.840.10045.3.1.5", "prime239v2", 239],
      ["1.2.840.10045.3.1.6", "prime239v3", 239],
      ["1.3.132.0.4", "sect113r1", 113],
      ["1.3.132.0.5", "sect113r2", 113],
      ["1.3.132.0.22", "sect131r1", 131],
      ["1.3.132.0.23", "sect131r2", 131],
      ["1.3.132.0.1", "sect163k1", 163],
      ["1.3.132.0.2", "sect163r1", 163],
      ["1.3.132.0.15", "sect163r2", 163],
      ["1.3.132.0.24", "sect193r1", 193],
      ["1.3.132.0.25", "sect193r2", 193],
      ["1.3.132.0.26", "sect233k1", 233],
      ["1.3.132.0.27", "sect233r1", 233],
      ["1.3.132.0.3", "sect239k1", 239],
      ["1.2.840.10045.3.0.1", "c2pnb163v1", 163],
      ["1.2.840.10045.3.0.2", "c2pnb163v2", 163],
      ["1.2.840.10045.3.0.3", "c2pnb163v3", 163],
      ["1.2.840.10045.3.0.4", "c2pnb176v1", 176],
      ["1.2.840.10045.3.0.5", "c2tnb191v1", 191],
      ["1.2.840.10045.3.0.6", "c2tnb191v2", 191],
      ["1.2.840.10045.3.0.7", "c2tnb191v3", 191],
      ["1.2.840.10045.3.0.10", "c2pnb208w1", 208],
      ["1.2.840.10045.3.0.11", "c2tnb239v1", 239],
      ["1.2.840.10045.3.0.12", "c2tnb239v2", 239],
      ["1.2.840.10045.3.0.13", "c2tnb239v3", 239],
      ["1.3.36.3.3.2.8.1.1.1", "brainpoolP160r1", 160],
      ["1.3.36.3.3.2.8.1.1.2", "brainpoolP160t1", 160],
      ["1.3.36.3.3.2.8.1.1.3", "brainpoolP192r1", 192],
      ["1.3.36.3.3.2.8.1.1.4", "brainpoolP192t1", 192],
      ["1.3.36.3.3.2.8.1.1.5", "brainpoolP224r1", 224],
      ["1.3.36.3.3.2.8.1.1.6", "brainpoolP224t1", 224],
      ["2.23.43.1.4.1", "wap-wsg-idm-ecid-wtls1", 112],
      ["2.23.43.1.4.3", "wap-wsg-idm-ecid-wtls3", 163],
      ["2.23.43.1.4.4", "wap-wsg-idm-ecid-wtls4", 113],
      ["2.23.43.1.4.5", "wap-wsg-idm-ecid-wtls5", 163],
      ["2.23.43.1.4.6", "wap-wsg-idm-ecid-wtls6", 112],
      ["2.23.43.1.4.7", "wap-wsg-idm-ecid-wtls7", 160],
      ["2.23.43.1.4.8", "wap-wsg-idm-ecid-wtls8", 112],
      ["2.23.43.1.4.9", "wap-wsg-idm-ecid-wtls9", 160],
      ["2.23.43.1.4.10", "wap-wsg-idm-ecid-wtls10", 233],
      ["2.23.43.1.4.11", "wap-wsg-idm-ecid-wtls11", 233],
      ["2.23.43.1.4.12", "wap-wsg-idm-ecid-wtls12", 224],
    ] as const
  ).map(([oid, name, bits]) => [oid, { name, bits }]),
);

const OTHER_NAMES: ReadonlyMap<string, string> = new Map([
  ["1.3.132.0.10", "secp256k1"],
  ["1.3.36.3.3.2.8.1.1.7", "brainpoolP256r1"],
  ["1.3.36.3.3.2.8.1.1.11", "brainpoolP384r1"],
  ["1.3.36.3.3.2.8.1.1.13", "brainpoolP512r1"],
  ["1.2.156.10197.1.301", "SM2"],
]);

/** "1.2.840.10045.4.3.2 (ecdsaWithSha256)" — for error messages a human can act on. */
export function describeOid(oid: string): string {
  const name = NAME_BY_OID.get(oid) ?? WEAK_CURVES.get(oid)?.name ?? OTHER_NAMES.get(oid);
  return name === undefined ? oid : `${oid} (${name})`;
}
