// A small, strict DER reader and writer for the signing hot path. Generic ASN.1 schema libraries
// cost more than the signature itself (DESIGN.md §12), so CSRs and certificates are walked by hand
// with this file. The reader accepts only what DER allows — definite, minimally encoded lengths and
// low tag numbers — and checks every length against its enclosing bounds, so hostile input can only
// ever produce a DerError. Two DER rules are deliberately not enforced because common encoders
// break them and nothing we decide depends on them: SET OF element order, and omission of
// DEFAULT values (an explicit `critical FALSE`). Both are covered by the signature anyway.

export class DerError extends Error {
  readonly code = "ERR_OSM_CERT_DER";
}

/** Universal tags (with the constructed bit where DER requires it) and context-specific classes. */
export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  NUMERIC_STRING: 0x12,
  PRINTABLE_STRING: 0x13,
  T61_STRING: 0x14,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  VISIBLE_STRING: 0x1a,
  UNIVERSAL_STRING: 0x1c,
  BMP_STRING: 0x1e,
  SEQUENCE: 0x30,
  SET: 0x31,
  CONTEXT_PRIMITIVE: 0x80,
  CONTEXT_CONSTRUCTED: 0xa0,
} as const;

/** One TLV: `start`..`end` is the content; the TLV itself begins at `start - headerLength`. */
export interface Tlv {
  readonly tag: number;
  readonly headerLength: number;
  readonly start: number;
  readonly end: number;
}

/** At most 3 length octets (16 MiB): nothing we parse comes near it (CSRs are ≤ 8 KiB). */
const MAX_LENGTH_OCTETS = 3;

function hex(byte: number): string {
  return `0x${byte.toString(16).padStart(2, "0")}`;
}

/** Reads the TLV at `offset`, which must end at or before `limit`. */
export function readTlv(buf: Uint8Array, offset: number, limit: number = buf.length): Tlv {
  if (offset >= limit) throw new DerError(`truncated: expected a tag at offset ${offset}`);
  const tag = buf[offset] as number;
  // High tag numbers (0x1f) never occur in X.509 structures we accept; refusing them keeps tags one byte.
  if ((tag & 0x1f) === 0x1f) throw new DerError(`unsupported high-tag-number form at offset ${offset}`);
  // 0x00 is BER's end-of-contents marker, which only indefinite lengths use; DER never has one.
  if (tag === 0x00) throw new DerError(`end-of-contents tag at offset ${offset} (not DER)`);
  if (offset + 1 >= limit) throw new DerError(`truncated: missing length at offset ${offset + 1}`);
  const first = buf[offset + 1] as number;
  let length: number;
  let headerLength: number;
  if (first < 0x80) {
    length = first;
    headerLength = 2;
  } else if (first === 0x80) {
    throw new DerError(`indefinite length at offset ${offset + 1} (not DER)`);
  } else {
    const count = first & 0x7f;
    if (count > MAX_LENGTH_OCTETS) {
      throw new DerError(`length of ${count} octets at offset ${offset + 1} is too large`);
    }
    if (offset + 2 + count > limit) throw new DerError(`truncated: length octets at offset ${offset + 1}`);
    const lead = buf[offset + 2] as number;
    if (lead === 0) {
      throw new DerError(`non-minimal length encoding at offset ${offset + 1} (leading zero octet)`);
    }
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + (buf[offset + 2 + i] as number);
    if (length < 0x80) {
      throw new DerError(
        `non-minimal length encoding at offset ${offset + 1} (${length} fits the short form)`,
      );
    }
    headerLength = 2 + count;
  }
  const start = offset + headerLength;
  const end = start + length;
  if (end > limit) {
    throw new DerError(
      `truncated: ${hex(tag)} at offset ${offset} claims ${length} bytes, only ${limit - start} remain`,
    );
  }
  return { tag, headerLength, start, end };
}

/** A cursor over the TLVs inside one constructed value (or a whole buffer). */
export class DerReader {
  private pos: number;

  constructor(
    readonly buf: Buffer,
    start = 0,
    readonly end: number = buf.length,
  ) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** The next tag, or -1 at the end. */
  peekTag(): number {
    return this.pos < this.end ? (this.buf[this.pos] as number) : -1;
  }

  read(what: string): Tlv {
    if (this.pos >= this.end) throw new DerError(`${what}: missing (truncated)`);
    const tlv = readTlv(this.buf, this.pos, this.end);
    this.pos = tlv.end;
    return tlv;
  }

  expect(tag: number, what: string): Tlv {
    const found = this.peekTag();
    if (found !== tag) {
      throw new DerError(
        found === -1
          ? `${what}: missing (truncated)`
          : `${what}: expected tag ${hex(tag)}, found ${hex(found)}`,
      );
    }
    return this.read(what);
  }

  /** The next TLV if it carries `tag`; otherwise nothing is consumed. */
  optional(tag: number, what: string): Tlv | undefined {
    return this.peekTag() === tag ? this.read(what) : undefined;
  }

  /** A reader over the content of a constructed TLV read from this buffer. */
  enter(tlv: Tlv): DerReader {
    return new DerReader(this.buf, tlv.start, tlv.end);
  }

  /** Trailing bytes are how smuggled data hides; every structure must end exactly. */
  expectEnd(what: string): void {
    if (this.pos !== this.end) {
      throw new DerError(`${what}: ${this.end - this.pos} unexpected trailing byte(s)`);
    }
  }
}

/** The content bytes of a TLV (a view, not a copy). */
export function contentOf(buf: Buffer, tlv: Tlv): Buffer {
  return buf.subarray(tlv.start, tlv.end);
}

/** The whole TLV, header included (a view, not a copy). */
export function encodingOf(buf: Buffer, tlv: Tlv): Buffer {
  return buf.subarray(tlv.start - tlv.headerLength, tlv.end);
}

// ---------------------------------------------------------------------------------------------
// Decoding primitive values

/** Dotted form of OID content octets (arcs beyond 2^53 are kept exact with BigInt). */
export function decodeOid(bytes: Uint8Array): string {
  const n = bytes.length;
  if (n === 0) throw new DerError("OBJECT IDENTIFIER is empty");
  if (((bytes[n - 1] as number) & 0x80) !== 0) {
    throw new DerError("OBJECT IDENTIFIER ends inside a sub-identifier");
  }
  let text = "";
  let first = true;
  let i = 0;
  while (i < n) {
    if (bytes[i] === 0x80) {
      throw new DerError("OBJECT IDENTIFIER sub-identifier has a non-minimal leading 0x80 octet");
    }
    let value = 0;
    let big: bigint | undefined;
    for (;;) {
      const b = bytes[i++] as number;
      if (big === undefined && value < 2 ** 45) value = value * 128 + (b & 0x7f);
      else big = (big ?? BigInt(value)) * 128n + BigInt(b & 0x7f);
      if ((b & 0x80) === 0) break;
    }
    if (first) {
      first = false;
      // The first sub-identifier packs two arcs: 40 * arc0 + arc1, where arc0 ∈ {0, 1, 2}.
      if (big !== undefined) text = `2.${big - 80n}`;
      else if (value < 40) text = `0.${value}`;
      else if (value < 80) text = `1.${value - 40}`;
      else text = `2.${value - 80}`;
    } else {
      text += `.${big ?? value}`;
    }
  }
  return text;
}

// Hot-path OIDs repeat in every CSR; a bounded cache keyed by the raw octets skips re-decoding
// them without letting hostile input grow memory.
const OID_CACHE_LIMIT = 512;
const oidDecodeCache = new Map<string, string>();

/** The OID in an OBJECT IDENTIFIER TLV. */
export function readOid(buf: Buffer, tlv: Tlv, what = "OBJECT IDENTIFIER"): string {
  if (tlv.tag !== TAG.OID) {
    throw new DerError(`${what}: expected an OBJECT IDENTIFIER, found tag ${hex(tlv.tag)}`);
  }
  const key = buf.toString("latin1", tlv.start, tlv.end);
  const cached = oidDecodeCache.get(key);
  if (cached !== undefined) return cached;
  const dotted = decodeOid(buf.subarray(tlv.start, tlv.end));
  if (oidDecodeCache.size < OID_CACHE_LIMIT) oidDecodeCache.set(key, dotted);
  return dotted;
}

export function readBoolean(buf: Buffer, tlv: Tlv, what: string): boolean {
  if (tlv.tag !== TAG.BOOLEAN) throw new DerError(`${what}: expected a BOOLEAN, found tag ${hex(tlv.tag)}`);
  if (tlv.end - tlv.start !== 1) throw new DerError(`${what}: BOOLEAN must be one octet`);
  const v = buf[tlv.start];
  if (v === 0x00) return false;
  if (v === 0xff) return true;
  throw new DerError(`${what}: BOOLEAN must be 0x00 or 0xff in DER, found ${hex(v as number)}`);
}

/** Checks INTEGER content for DER's minimal two's-complement form. */
export function checkIntegerContent(buf: Uint8Array, tlv: Tlv, what: string): void {
  if (tlv.tag !== TAG.INTEGER) throw new DerError(`${what}: expected an INTEGER, found tag ${hex(tlv.tag)}`);
  checkMinimalInteger(buf, tlv, what);
}

function checkMinimalInteger(buf: Uint8Array, tlv: Tlv, what: string): void {
  const len = tlv.end - tlv.start;
  if (len === 0) throw new DerError(`${what}: INTEGER is empty`);
  if (len > 1) {
    const b0 = buf[tlv.start] as number;
    const b1 = buf[tlv.start + 1] as number;
    if ((b0 === 0x00 && b1 < 0x80) || (b0 === 0xff && b1 >= 0x80)) {
      throw new DerError(`${what}: INTEGER is not minimally encoded`);
    }
  }
}

/** An INTEGER that must fit a JavaScript number (versions, path lengths). */
export function readSmallInteger(buf: Buffer, tlv: Tlv, what: string): number {
  checkIntegerContent(buf, tlv, what);
  const len = tlv.end - tlv.start;
  if (len > 6) throw new DerError(`${what}: INTEGER is too large`);
  return buf.readIntBE(tlv.start, len);
}

/** A NULL's content must be empty. */
export function checkNull(tlv: Tlv, what: string): void {
  if (tlv.tag !== TAG.NULL) throw new DerError(`${what}: expected NULL, found tag ${hex(tlv.tag)}`);
  if (tlv.end !== tlv.start) throw new DerError(`${what}: NULL must be empty`);
}

/**
 * BIT STRING content without the unused-bits octet. DER requires unused bits to be zero; the
 * callers here (keys, signatures) also require whole octets, which `octetAligned` enforces.
 */
export function readBitString(
  buf: Buffer,
  tlv: Tlv,
  what: string,
  octetAligned = true,
): { bytes: Buffer; unusedBits: number } {
  if (tlv.tag !== TAG.BIT_STRING) {
    throw new DerError(`${what}: expected a BIT STRING, found tag ${hex(tlv.tag)}`);
  }
  if (tlv.end === tlv.start) throw new DerError(`${what}: BIT STRING is empty`);
  const unusedBits = buf[tlv.start] as number;
  if (unusedBits > 7) throw new DerError(`${what}: BIT STRING claims ${unusedBits} unused bits`);
  const bytes = buf.subarray(tlv.start + 1, tlv.end);
  if (unusedBits !== 0) {
    if (octetAligned) throw new DerError(`${what}: BIT STRING must be a whole number of octets`);
    if (bytes.length === 0) throw new DerError(`${what}: empty BIT STRING with unused bits`);
    if (((bytes[bytes.length - 1] as number) & ((1 << unusedBits) - 1)) !== 0) {
      throw new DerError(`${what}: BIT STRING unused bits must be zero in DER`);
    }
  }
  return { bytes, unusedBits };
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** UTF-16BE by hand: TextDecoder only knows "utf-16be" when node is built with ICU. */
function decodeUtf16be(buf: Buffer, start: number, end: number, what: string): string {
  let text = "";
  for (let i = start; i < end; i += 2) {
    const unit = buf.readUInt16BE(i);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = i + 2 < end ? buf.readUInt16BE(i + 2) : 0;
      if (next < 0xdc00 || next > 0xdfff) throw new DerError(`${what}: BMPString has an unpaired surrogate`);
      text += String.fromCharCode(unit, next);
      i += 2;
    } else if (unit >= 0xdc00 && unit <= 0xdfff) {
      throw new DerError(`${what}: BMPString has an unpaired surrogate`);
    } else {
      text += String.fromCharCode(unit);
    }
  }
  return text;
}

function isAscii(bytes: Uint8Array, min: number, max: number): boolean {
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i] as number;
    if (b < min || b > max) return false;
  }
  return true;
}

const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/;
const NUMERIC = /^[0-9 ]*$/;

/** IA5String (ASCII) content as text; DNS names, URIs and e-mail SANs use it. */
export function readIa5String(buf: Buffer, start: number, end: number, what: string): string {
  const bytes = buf.subarray(start, end);
  if (!isAscii(bytes, 0x00, 0x7f)) throw new DerError(`${what}: IA5String contains a non-ASCII octet`);
  return buf.toString("latin1", start, end);
}

/** True for the universal tags `readString` decodes. */
export function isStringTag(tag: number): boolean {
  switch (tag) {
    case TAG.UTF8_STRING:
    case TAG.NUMERIC_STRING:
    case TAG.PRINTABLE_STRING:
    case TAG.T61_STRING:
    case TAG.IA5_STRING:
    case TAG.VISIBLE_STRING:
    case TAG.UNIVERSAL_STRING:
    case TAG.BMP_STRING:
      return true;
    default:
      return false;
  }
}

/** Any of the X.520 DirectoryString types (and IA5/Numeric/Visible) as text, validated per type. */
export function readString(buf: Buffer, tlv: Tlv, what: string): string {
  const bytes = buf.subarray(tlv.start, tlv.end);
  switch (tlv.tag) {
    case TAG.UTF8_STRING:
      if (isAscii(bytes, 0x00, 0x7f)) return buf.toString("latin1", tlv.start, tlv.end);
      try {
        return utf8.decode(bytes);
      } catch {
        throw new DerError(`${what}: UTF8String is not valid UTF-8`);
      }
    case TAG.PRINTABLE_STRING: {
      const text = buf.toString("latin1", tlv.start, tlv.end);
      if (!PRINTABLE.test(text)) {
        throw new DerError(`${what}: PrintableString contains a character outside its set`);
      }
      return text;
    }
    case TAG.NUMERIC_STRING: {
      const text = buf.toString("latin1", tlv.start, tlv.end);
      if (!NUMERIC.test(text)) throw new DerError(`${what}: NumericString contains a non-digit`);
      return text;
    }
    case TAG.IA5_STRING:
      return readIa5String(buf, tlv.start, tlv.end, what);
    case TAG.VISIBLE_STRING:
      if (!isAscii(bytes, 0x20, 0x7e)) {
        throw new DerError(`${what}: VisibleString contains a non-printable octet`);
      }
      return buf.toString("latin1", tlv.start, tlv.end);
    case TAG.T61_STRING:
      // T.61 is in practice written as Latin-1 by every encoder still producing it.
      return buf.toString("latin1", tlv.start, tlv.end);
    case TAG.BMP_STRING:
      if (bytes.length % 2 !== 0) throw new DerError(`${what}: BMPString has an odd length`);
      return decodeUtf16be(buf, tlv.start, tlv.end, what);
    case TAG.UNIVERSAL_STRING: {
      if (bytes.length % 4 !== 0) {
        throw new DerError(`${what}: UniversalString length is not a multiple of 4`);
      }
      let text = "";
      for (let i = 0; i < bytes.length; i += 4) {
        const cp = buf.readUInt32BE(tlv.start + i);
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
          throw new DerError(`${what}: UniversalString holds an invalid code point`);
        }
        text += String.fromCodePoint(cp);
      }
      return text;
    }
    default:
      throw new DerError(`${what}: expected a string type, found tag ${hex(tlv.tag)}`);
  }
}

const MAX_DEPTH = 32;
const UTC_TIME = /^\d{12}Z$/;
const GENERALIZED_TIME = /^\d{14}(\.\d*[1-9])?Z$/;

/**
 * Strict DER all the way down for values we carry without interpreting (opaque attribute values,
 * otherName contents, …), so nothing malformed hides behind "we did not look": framing everywhere,
 * and content rules for every universal type. Constructed strings and exotic universal types
 * (REAL, EXTERNAL, …) are BER-only or never used in PKIX, and are refused.
 */
export function checkWellFormed(buf: Buffer, start: number, end: number, depth = 0): void {
  if (depth > MAX_DEPTH) throw new DerError(`nested deeper than ${MAX_DEPTH} levels`);
  let pos = start;
  while (pos < end) {
    const tlv = readTlv(buf, pos, end);
    checkContent(buf, tlv, depth);
    pos = tlv.end;
  }
}

function checkContent(buf: Buffer, tlv: Tlv, depth: number): void {
  const tag = tlv.tag;
  if ((tag & 0xc0) !== 0) {
    // Application, context and private tags: only their framing is ours to judge.
    if ((tag & 0x20) !== 0) checkWellFormed(buf, tlv.start, tlv.end, depth + 1);
    return;
  }
  switch (tag) {
    case TAG.SEQUENCE:
    case TAG.SET:
      checkWellFormed(buf, tlv.start, tlv.end, depth + 1);
      return;
    case TAG.BOOLEAN:
      readBoolean(buf, tlv, "BOOLEAN");
      return;
    case TAG.INTEGER:
    case 0x0a: // ENUMERATED
      checkMinimalInteger(buf, tlv, "INTEGER");
      return;
    case TAG.BIT_STRING:
      readBitString(buf, tlv, "BIT STRING", false);
      return;
    case TAG.OCTET_STRING:
      return;
    case TAG.NULL:
      checkNull(tlv, "NULL");
      return;
    case TAG.OID:
      decodeOid(buf.subarray(tlv.start, tlv.end));
      return;
    case TAG.UTC_TIME:
      if (!UTC_TIME.test(buf.toString("latin1", tlv.start, tlv.end))) {
        throw new DerError("UTCTime is not YYMMDDHHMMSSZ");
      }
      return;
    case TAG.GENERALIZED_TIME:
      if (!GENERALIZED_TIME.test(buf.toString("latin1", tlv.start, tlv.end))) {
        throw new DerError("GeneralizedTime is not YYYYMMDDHHMMSS[.f]Z");
      }
      return;
    default:
      if (isStringTag(tag)) {
        readString(buf, tlv, "string");
        return;
      }
      throw new DerError(`universal tag 0x${tag.toString(16).padStart(2, "0")} is not accepted here`);
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding

function lengthOctets(length: number): number {
  if (length < 0x80) return 1;
  if (length < 0x100) return 2;
  if (length < 0x10000) return 3;
  if (length < 0x1000000) return 4;
  return 5;
}

function writeHeader(out: Buffer, tag: number, length: number): number {
  out[0] = tag;
  if (length < 0x80) {
    out[1] = length;
    return 2;
  }
  const count = lengthOctets(length) - 1;
  out[1] = 0x80 | count;
  for (let i = count; i >= 1; i--) {
    out[1 + i] = length & 0xff;
    length = Math.floor(length / 256);
  }
  return 2 + count;
}

/** One primitive or constructed TLV around already-encoded content. */
export function derTlv(tag: number, content: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(1 + lengthOctets(content.length) + content.length);
  const at = writeHeader(out, tag, content.length);
  out.set(content, at);
  return out;
}

/** A constructed TLV whose content is the concatenation of `parts` — one allocation, no copies of copies. */
export function derConstructed(tag: number, parts: readonly Uint8Array[]): Buffer {
  let length = 0;
  for (const p of parts) length += p.length;
  const out = Buffer.allocUnsafe(1 + lengthOctets(length) + length);
  let at = writeHeader(out, tag, length);
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function derSequence(...parts: Uint8Array[]): Buffer {
  return derConstructed(TAG.SEQUENCE, parts);
}

/** SET OF: DER orders the elements by their encodings, so we sort when there is more than one. */
export function derSet(...parts: Uint8Array[]): Buffer {
  if (parts.length > 1) parts.sort((a, b) => Buffer.compare(a, b));
  return derConstructed(TAG.SET, parts);
}

/** INTEGER from an unsigned big-endian magnitude: leading zeros dropped, 0x00 prepended when the top bit is set. */
export function derInteger(bytes: Uint8Array): Buffer {
  if (bytes.length === 0) return Buffer.from([TAG.INTEGER, 1, 0]);
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const magnitude = bytes.subarray(i);
  if (((magnitude[0] as number) & 0x80) === 0) return derTlv(TAG.INTEGER, magnitude);
  const content = Buffer.allocUnsafe(magnitude.length + 1);
  content[0] = 0;
  content.set(magnitude, 1);
  return derTlv(TAG.INTEGER, content);
}

/** INTEGER from a non-negative safe integer (versions, path lengths). */
export function derSmallInteger(value: number): Buffer {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new DerError(`cannot encode ${value} as a small non-negative INTEGER`);
  }
  const bytes: number[] = [];
  let v = value;
  do {
    bytes.unshift(v % 256);
    v = Math.floor(v / 256);
  } while (v > 0);
  return derInteger(Uint8Array.from(bytes));
}

const oidEncodeCache = new Map<string, Buffer>();
const DOTTED = /^[0-2](\.(0|[1-9][0-9]*))+$/;

/** OBJECT IDENTIFIER TLV. Our OIDs are a fixed set, so every encoding is computed once. */
export function derOid(dotted: string): Buffer {
  const cached = oidEncodeCache.get(dotted);
  if (cached !== undefined) return cached;
  if (!DOTTED.test(dotted)) throw new DerError(`"${dotted}" is not a dotted OBJECT IDENTIFIER`);
  const arcs = dotted.split(".").map((a) => BigInt(a));
  const arc0 = arcs[0] as bigint;
  const arc1 = arcs[1] as bigint;
  if (arc0 < 2n && arc1 >= 40n) {
    throw new DerError(`"${dotted}": the second arc must be below 40 under arc ${arc0}`);
  }
  const content: number[] = [];
  for (const sub of [arc0 * 40n + arc1, ...arcs.slice(2)]) {
    const septets: number[] = [];
    let v = sub;
    do {
      septets.unshift(Number(v & 0x7fn));
      v >>= 7n;
    } while (v > 0n);
    for (let i = 0; i < septets.length - 1; i++) septets[i] = (septets[i] as number) | 0x80;
    content.push(...septets);
  }
  const encoded = derTlv(TAG.OID, Uint8Array.from(content));
  if (oidEncodeCache.size < OID_CACHE_LIMIT) oidEncodeCache.set(dotted, encoded);
  return encoded;
}

export function derUtf8String(text: string): Buffer {
  return derTlv(TAG.UTF8_STRING, Buffer.from(text, "utf8"));
}

export function derPrintableString(text: string): Buffer {
  if (!PRINTABLE.test(text)) throw new DerError(`"${text}" contains characters PrintableString cannot hold`);
  return derTlv(TAG.PRINTABLE_STRING, Buffer.from(text, "latin1"));
}

export function derIa5String(text: string): Buffer {
  return derTlv(TAG.IA5_STRING, ia5Bytes(text));
}

/** The octets of an IA5 (ASCII) string, refusing anything else rather than mangling it. */
export function ia5Bytes(text: string): Buffer {
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) > 0x7f) throw new DerError(`"${text}" is not ASCII (IA5String)`);
  }
  return Buffer.from(text, "latin1");
}

export function derBitString(bytes: Uint8Array, unusedBits = 0): Buffer {
  if (
    !Number.isInteger(unusedBits) ||
    unusedBits < 0 ||
    unusedBits > 7 ||
    (bytes.length === 0 && unusedBits !== 0)
  ) {
    throw new DerError(`invalid BIT STRING: ${unusedBits} unused bits over ${bytes.length} octets`);
  }
  const out = Buffer.allocUnsafe(1 + lengthOctets(bytes.length + 1) + bytes.length + 1);
  const at = writeHeader(out, TAG.BIT_STRING, bytes.length + 1);
  out[at] = unusedBits;
  out.set(bytes, at + 1);
  return out;
}

export function derOctetString(bytes: Uint8Array): Buffer {
  return derTlv(TAG.OCTET_STRING, bytes);
}

const TRUE = Buffer.from([TAG.BOOLEAN, 1, 0xff]);
const FALSE = Buffer.from([TAG.BOOLEAN, 1, 0x00]);
const NULL = Buffer.from([TAG.NULL, 0]);

export function derBoolean(value: boolean): Buffer {
  return value ? TRUE : FALSE;
}

export function derNull(): Buffer {
  return NULL;
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

/**
 * RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 (and before 1950), always in
 * whole seconds and Zulu. Sub-second parts are truncated, never rounded up past the caller's bound.
 */
export function derUtcOrGeneralizedTime(date: Date): Buffer {
  const ms = date.getTime();
  if (!Number.isFinite(ms)) throw new DerError("cannot encode an invalid Date");
  const year = date.getUTCFullYear();
  if (year < 0 || year > 9999) throw new DerError(`cannot encode year ${year} in an X.509 time`);
  const rest = `${pad2(date.getUTCMonth() + 1)}${pad2(date.getUTCDate())}${pad2(date.getUTCHours())}${pad2(date.getUTCMinutes())}${pad2(date.getUTCSeconds())}Z`;
  if (year >= 1950 && year <= 2049) {
    return derTlv(TAG.UTC_TIME, Buffer.from(`${pad2(year % 100)}${rest}`, "latin1"));
  }
  return derTlv(TAG.GENERALIZED_TIME, Buffer.from(`${String(year).padStart(4, "0")}${rest}`, "latin1"));
}

function checkTagNumber(tagNumber: number): void {
  if (!Number.isInteger(tagNumber) || tagNumber < 0 || tagNumber > 30) {
    throw new DerError(`context tag number ${tagNumber} is out of the low-tag range 0..30`);
  }
}

/** [n] EXPLICIT: a constructed context tag wrapping one complete TLV. */
export function derExplicit(tagNumber: number, inner: Uint8Array): Buffer {
  checkTagNumber(tagNumber);
  return derTlv(TAG.CONTEXT_CONSTRUCTED | tagNumber, inner);
}

/** [n] IMPLICIT over a primitive type: the content octets under a context tag. */
export function derImplicitPrimitive(tagNumber: number, content: Uint8Array): Buffer {
  checkTagNumber(tagNumber);
  return derTlv(TAG.CONTEXT_PRIMITIVE | tagNumber, content);
}

/** [n] IMPLICIT over a constructed type (SEQUENCE/SET OF): the parts under a constructed context tag. */
export function derImplicitContext(tagNumber: number, ...parts: Uint8Array[]): Buffer {
  checkTagNumber(tagNumber);
  return derConstructed(TAG.CONTEXT_CONSTRUCTED | tagNumber, parts);
}
