// Names inside X.509 structures, read structurally: a Name's attributes and a GeneralNames
// sequence (subjectAltName). Shared by the CSR parser (what a caller asks for) and the certificate
// reader (who a peer is), so identity is never taken from a display string. Errors are DerErrors;
// each caller says what it was reading.

import {
  checkWellFormed,
  DerError,
  DerReader,
  decodeOid,
  encodingOf,
  isStringTag,
  readBoolean,
  readIa5String,
  readOid,
  readString,
  TAG,
  type Tlv,
} from "./der.js";
import { describeOid } from "./oids.js";

export interface NameAttribute {
  readonly oid: string;
  /** Decoded text for string values; "#" + hex of the DER for anything else (RFC 4514). */
  readonly value: string;
  readonly isString: boolean;
}

/** Every attribute of a Name, in order, with string values decoded and the rest as "#" + DER hex. */
export function parseName(der: Buffer, tlv: Tlv, what: string): NameAttribute[] {
  const attributes: NameAttribute[] = [];
  const rdnLabel = `${what} RDN`;
  const attributeLabel = `${what} attribute`;
  const valueLabel = `${what} attribute value`;
  const rdns = new DerReader(der, tlv.start, tlv.end);
  while (!rdns.done) {
    const set = rdns.expect(TAG.SET, rdnLabel);
    if (set.start === set.end) throw new DerError(`${what}: empty RDN`);
    const rdn = rdns.enter(set);
    while (!rdn.done) {
      const atv = rdn.enter(rdn.expect(TAG.SEQUENCE, attributeLabel));
      const oid = readOid(der, atv.expect(TAG.OID, attributeLabel));
      const value = atv.read(valueLabel);
      atv.expectEnd(attributeLabel);
      if (isStringTag(value.tag)) {
        attributes.push({ oid, value: readString(der, value, valueLabel), isString: true });
      } else {
        // Values we do not decode are still held to DER framing all the way down.
        checkWellFormed(der, value.start - value.headerLength, value.end);
        attributes.push({ oid, value: `#${encodingOf(der, value).toString("hex")}`, isString: false });
      }
    }
  }
  return attributes;
}

export interface Extension {
  readonly oid: string;
  readonly critical: boolean;
  /** The extnValue OCTET STRING's content. */
  readonly value: Tlv;
}

/**
 * The entries of an Extensions SEQUENCE (certificate or CSR extensionRequest), strictly framed.
 * RFC 5280 §4.2: at most one instance of each; two would be two answers to one question.
 */
export function readExtensions(der: Buffer, tlv: Tlv): Extension[] {
  const reader = new DerReader(der, tlv.start, tlv.end);
  const found: Extension[] = [];
  while (!reader.done) {
    const extension = reader.enter(reader.expect(TAG.SEQUENCE, "extension"));
    const oid = readOid(der, extension.expect(TAG.OID, "extnID"));
    const criticalTlv = extension.optional(TAG.BOOLEAN, "extension critical");
    const critical = criticalTlv !== undefined && readBoolean(der, criticalTlv, "extension critical");
    const value = extension.expect(TAG.OCTET_STRING, "extnValue");
    extension.expectEnd("extension");
    if (found.some((e) => e.oid === oid))
      throw new DerError(`extension ${describeOid(oid)} appears more than once`);
    found.push({ oid, critical, value });
  }
  return found;
}

/** SAN entries by type. Kinds no mesh identity uses are only counted. */
export interface GeneralNames {
  dnsNames: string[];
  uris: string[];
  ipAddresses: string[];
  emailAddresses: string[];
  /** otherName, directoryName, registeredID entries. */
  otherSanCount: number;
}

export function emptyGeneralNames(): GeneralNames {
  return { dnsNames: [], uris: [], ipAddresses: [], emailAddresses: [], otherSanCount: 0 };
}

/** A subjectAltName extension's value (the OCTET STRING's content TLV), added to `out` by type. */
export function parseSubjectAltName(der: Buffer, value: Tlv, out: GeneralNames): void {
  const outer = new DerReader(der, value.start, value.end);
  const sequence = outer.expect(TAG.SEQUENCE, "subjectAltName");
  outer.expectEnd("subjectAltName");
  const names = outer.enter(sequence);
  if (names.done) throw new DerError("subjectAltName is empty");
  while (!names.done) {
    const name = names.read("GeneralName");
    switch (name.tag) {
      case TAG.CONTEXT_PRIMITIVE | 1:
        out.emailAddresses.push(readIa5String(der, name.start, name.end, "rfc822Name SAN"));
        break;
      case TAG.CONTEXT_PRIMITIVE | 2:
        out.dnsNames.push(readIa5String(der, name.start, name.end, "dNSName SAN"));
        break;
      case TAG.CONTEXT_PRIMITIVE | 6:
        out.uris.push(readIa5String(der, name.start, name.end, "URI SAN"));
        break;
      case TAG.CONTEXT_PRIMITIVE | 7:
        out.ipAddresses.push(formatIp(der.subarray(name.start, name.end)));
        break;
      case TAG.CONTEXT_CONSTRUCTED | 0: {
        // otherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY } (implicitly tagged [0]).
        const other = new DerReader(der, name.start, name.end);
        readOid(der, other.expect(TAG.OID, "otherName type-id"));
        const explicit = other.enter(other.expect(TAG.CONTEXT_CONSTRUCTED | 0, "otherName value"));
        const inner = explicit.read("otherName value");
        explicit.expectEnd("otherName value");
        checkWellFormed(der, inner.start - inner.headerLength, inner.end);
        other.expectEnd("otherName");
        out.otherSanCount++;
        break;
      }
      case TAG.CONTEXT_CONSTRUCTED | 4: {
        const inner = new DerReader(der, name.start, name.end);
        const directoryName = inner.expect(TAG.SEQUENCE, "directoryName");
        inner.expectEnd("directoryName");
        parseName(der, directoryName, "directoryName");
        out.otherSanCount++;
        break;
      }
      case TAG.CONTEXT_CONSTRUCTED | 3:
      case TAG.CONTEXT_CONSTRUCTED | 5:
        // x400Address and ediPartyName: no mesh identity uses them, and implementations disagree on
        // their encoding (@peculiar reads ediPartyName as explicitly tagged), so they are refused.
        throw new DerError(
          `subjectAltName ${name.tag === (TAG.CONTEXT_CONSTRUCTED | 3) ? "x400Address" : "ediPartyName"} entries are not supported`,
        );
      case TAG.CONTEXT_PRIMITIVE | 8:
        decodeOid(der.subarray(name.start, name.end));
        out.otherSanCount++;
        break;
      default:
        throw new DerError(`subjectAltName holds an unknown GeneralName tag 0x${name.tag.toString(16)}`);
    }
  }
}

/** SAN iPAddress octets as text: dotted IPv4, or RFC 5952 IPv6 (lower case, longest zero run as "::"). */
function formatIp(bytes: Buffer): string {
  if (bytes.length === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  if (bytes.length !== 16) throw new DerError(`iPAddress SAN must be 4 or 16 octets, found ${bytes.length}`);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i));
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(":");
  if (bestLength < 2) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}
