import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import {
  DerError,
  DerReader,
  decodeOid,
  derBitString,
  derBoolean,
  derExplicit,
  derIa5String,
  derImplicitContext,
  derImplicitPrimitive,
  derInteger,
  derNull,
  derOctetString,
  derOid,
  derPrintableString,
  derSequence,
  derSet,
  derSmallInteger,
  derUtcOrGeneralizedTime,
  derUtf8String,
  readBitString,
  readBoolean,
  readOid,
  readSmallInteger,
  readString,
  readTlv,
  TAG,
} from "../../common/x509/der.js";

const isDerError = (e: unknown): boolean => e instanceof DerError && e.code === "ERR_OSM_CERT_DER";
const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ""), "hex");

test("reads short and long definite lengths", () => {
  assert.deepEqual(readTlv(hex("04 03 010203"), 0), { tag: 0x04, headerLength: 2, start: 2, end: 5 });
  const long = Buffer.concat([hex("04 81 80"), Buffer.alloc(0x80)]);
  assert.deepEqual(readTlv(long, 0), { tag: 0x04, headerLength: 3, start: 3, end: 3 + 0x80 });
  const longer = Buffer.concat([hex("30 82 0100"), Buffer.alloc(0x100)]);
  assert.deepEqual(readTlv(longer, 0), { tag: 0x30, headerLength: 4, start: 4, end: 4 + 0x100 });
});

test("refuses everything DER forbids or the bounds do not allow", () => {
  const cases: [string, string][] = [
    ["indefinite length", "30 80 0000"],
    ["long form for a short length", "04 81 05 0102030405"],
    ["leading zero length octet", `04 82 0080${"00".repeat(0x80)}`],
    ["length beyond the buffer", "04 05 0102"],
    ["missing length", "04"],
    ["missing length octets", "04 82 01"],
    ["high tag number form", "1f 01 00"],
    ["absurdly many length octets", "04 85 0000000001 00"],
  ];
  for (const [what, bytes] of cases) assert.throws(() => readTlv(hex(bytes), 0), isDerError, what);
  // The enclosing limit binds as tightly as the buffer end.
  assert.throws(() => readTlv(hex("30 03 020100 ff"), 0, 4), isDerError);
  assert.throws(() => readTlv(hex(""), 0), isDerError);
});

test("DerReader walks a structure and insists it ends exactly", () => {
  const der = derSequence(derSmallInteger(5), derOid("2.5.4.3"), derExplicit(0, derNull()));
  const top = new DerReader(der);
  const seq = top.expect(TAG.SEQUENCE, "outer");
  top.expectEnd("outer");
  const r = top.enter(seq);
  assert.equal(readSmallInteger(der, r.expect(TAG.INTEGER, "n"), "n"), 5);
  assert.equal(r.optional(TAG.BOOLEAN, "flag"), undefined);
  assert.equal(readOid(der, r.read("oid")), "2.5.4.3");
  assert.equal(r.peekTag(), 0xa0);
  r.read("explicit");
  assert.equal(r.done, true);
  assert.equal(r.peekTag(), -1);
  r.expectEnd("outer");
  assert.throws(
    () => r.read("more"),
    (e: unknown) => isDerError(e) && /more: missing/.test((e as Error).message),
  );

  const withTrailer = Buffer.concat([der, hex("00")]);
  const t = new DerReader(withTrailer);
  t.expect(TAG.SEQUENCE, "outer");
  assert.throws(
    () => t.expectEnd("outer"),
    (e: unknown) => isDerError(e) && /1 unexpected trailing byte/.test((e as Error).message),
  );
  assert.throws(
    () => new DerReader(der).expect(TAG.SET, "outer"),
    (e: unknown) => isDerError(e) && /expected tag 0x31, found 0x30/.test((e as Error).message),
  );
});

test("OIDs round-trip, including huge arcs, and malformed ones are refused", () => {
  for (const oid of [
    "1.2.840.10045.3.1.7",
    "2.5.29.17",
    "0.9.2342.19200300.100.1.25",
    "1.3.6.1.4.1.311.21.20",
    "2.999.3",
    "2.25.329800735698586629295641978511506172918",
    "1.2.9007199254740993",
  ]) {
    const der = derOid(oid);
    assert.equal(readOid(der, readTlv(der, 0)), oid, oid);
    assert.equal(decodeOid(der.subarray(2)), oid, oid);
  }
  assert.deepEqual(derOid("1.2.840.10045.2.1"), hex("06 07 2a8648ce3d0201"));
  assert.equal(derOid("2.5.4.3"), derOid("2.5.4.3"), "encodings are cached");
  assert.throws(() => decodeOid(hex("")), isDerError);
  assert.throws(() => decodeOid(hex("2a 86")), isDerError, "ends inside a sub-identifier");
  assert.throws(() => decodeOid(hex("2a 80 01")), isDerError, "non-minimal sub-identifier");
  assert.throws(() => derOid("3.1"), isDerError);
  assert.throws(() => derOid("1.40"), isDerError);
  assert.throws(() => derOid("1.02"), isDerError);
  assert.throws(() => readOid(hex("04 01 00"), readTlv(hex("04 01 00"), 0)), isDerError);
});

test("INTEGERs are minimal two's complement of a positive magnitude", () => {
  assert.deepEqual(derInteger(hex("")), hex("02 01 00"));
  assert.deepEqual(derInteger(hex("00")), hex("02 01 00"));
  assert.deepEqual(derInteger(hex("7f")), hex("02 01 7f"));
  assert.deepEqual(derInteger(hex("80")), hex("02 02 0080"));
  assert.deepEqual(derInteger(hex("000001")), hex("02 01 01"));
  assert.deepEqual(derInteger(hex("0000ff01")), hex("02 03 00ff01"));
  assert.deepEqual(derSmallInteger(0), hex("02 01 00"));
  assert.deepEqual(derSmallInteger(2), hex("02 01 02"));
  assert.deepEqual(derSmallInteger(256), hex("02 02 0100"));
  assert.deepEqual(derSmallInteger(128), hex("02 02 0080"));
  assert.throws(() => derSmallInteger(-1), isDerError);
  const read = (h: string): number => readSmallInteger(hex(h), readTlv(hex(h), 0), "n");
  assert.equal(read("02 01 ff"), -1);
  assert.equal(read("02 02 0080"), 128);
  assert.throws(() => read("02 02 0001"), isDerError, "non-minimal positive");
  assert.throws(() => read("02 02 ff80"), isDerError, "non-minimal negative");
  assert.throws(() => read("02 00"), isDerError, "empty");
  assert.throws(() => read("02 07 01020304050607"), isDerError, "too large for a number");
});

test("BOOLEAN, NULL and BIT STRING follow DER exactly", () => {
  assert.deepEqual(derBoolean(true), hex("01 01 ff"));
  assert.deepEqual(derBoolean(false), hex("01 01 00"));
  assert.deepEqual(derNull(), hex("05 00"));
  const bool = (h: string): boolean => readBoolean(hex(h), readTlv(hex(h), 0), "b");
  assert.equal(bool("01 01 ff"), true);
  assert.equal(bool("01 01 00"), false);
  assert.throws(() => bool("01 01 01"), isDerError, "BER true");
  assert.throws(() => bool("01 02 0000"), isDerError);

  assert.deepEqual(derBitString(hex("a0"), 5), hex("03 02 05 a0"));
  assert.deepEqual(derBitString(hex("")), hex("03 01 00"));
  assert.throws(() => derBitString(hex(""), 1), isDerError);
  assert.throws(() => derBitString(hex("00"), 8), isDerError);
  const bits = (h: string, aligned: boolean) => readBitString(hex(h), readTlv(hex(h), 0), "bits", aligned);
  assert.deepEqual(bits("03 03 00 0102", true).bytes, hex("0102"));
  assert.equal(bits("03 02 05 a0", false).unusedBits, 5);
  assert.throws(() => bits("03 02 05 a0", true), isDerError, "keys and signatures are whole octets");
  assert.throws(() => bits("03 02 05 a1", false), isDerError, "unused bits must be zero");
  assert.throws(() => bits("03 01 01", false), isDerError);
  assert.throws(() => bits("03 00", false), isDerError);
  assert.throws(() => bits("03 02 08 00", false), isDerError);
});

test("strings are written in their own type and read back validated", () => {
  const read = (der: Buffer): string => readString(der, readTlv(der, 0), "s");
  assert.deepEqual(derUtf8String("héllo"), Buffer.concat([hex("0c 06"), Buffer.from("héllo")]));
  assert.equal(
    read(derUtf8String("bookstore-v2.bookstore.cluster.local")),
    "bookstore-v2.bookstore.cluster.local",
  );
  assert.equal(read(derUtf8String("ünïcødé ☃ 😀")), "ünïcødé ☃ 😀");
  assert.equal(read(derPrintableString("Open Service Mesh")), "Open Service Mesh");
  assert.throws(() => derPrintableString("a@b"), isDerError);
  assert.equal(read(derIa5String("ops@example.com")), "ops@example.com");
  assert.throws(() => derIa5String("é"), isDerError);
  assert.equal(read(hex("1e 04 00e9 263a")), "é☺", "BMPString");
  assert.equal(read(hex("1c 04 0001f600")), "😀", "UniversalString");
  assert.equal(read(hex("14 02 e9 41")), "éA", "TeletexString as Latin-1");
  assert.equal(read(hex("12 03 313233")), "123");
  assert.throws(() => read(hex("0c 02 c328")), isDerError, "invalid UTF-8");
  assert.throws(() => read(hex("13 01 40")), isDerError, "@ is not printable");
  assert.throws(() => read(hex("16 01 80")), isDerError, "IA5 is 7-bit");
  assert.throws(() => read(hex("1e 03 00e900")), isDerError, "odd BMPString");
  assert.throws(() => read(hex("1e 02 d800")), isDerError, "lone surrogate");
  assert.throws(() => read(hex("1c 04 00110000")), isDerError, "beyond Unicode");
  assert.throws(() => read(hex("12 01 41")), isDerError, "NumericString digits only");
  assert.throws(() => read(hex("04 01 41")), isDerError, "not a string type");
  // A UTF-8 BOM is content, not something to strip silently.
  assert.equal(read(hex("0c 04 efbbbf41")), "\ufeffA");
});

test("times: UTCTime through 2049, GeneralizedTime otherwise, whole seconds, Zulu", () => {
  const text = (b: Buffer): string => `${b[0]?.toString(16)} ${b.subarray(2).toString("latin1")}`;
  assert.equal(text(derUtcOrGeneralizedTime(new Date("2031-01-11T23:15:09.299Z"))), "17 310111231509Z");
  assert.equal(text(derUtcOrGeneralizedTime(new Date("2049-12-31T23:59:59.999Z"))), "17 491231235959Z");
  assert.equal(text(derUtcOrGeneralizedTime(new Date("2050-01-01T00:00:00Z"))), "18 20500101000000Z");
  assert.equal(text(derUtcOrGeneralizedTime(new Date("1950-01-01T00:00:00Z"))), "17 500101000000Z");
  assert.equal(text(derUtcOrGeneralizedTime(new Date("1949-12-31T23:59:59Z"))), "18 19491231235959Z");
  assert.equal(text(derUtcOrGeneralizedTime(new Date("9999-12-31T23:59:59Z"))), "18 99991231235959Z");
  assert.throws(() => derUtcOrGeneralizedTime(new Date(Number.NaN)), isDerError);
});

test("SET OF sorts its elements as DER requires; tags and long lengths are encoded right", () => {
  assert.deepEqual(
    derSet(hex("02 01 05"), hex("02 01 01"), hex("01 01 ff")),
    hex("31 09 0101ff 020101 020105"),
  );
  assert.deepEqual(derExplicit(3, hex("05 00")), hex("a3 02 0500"));
  assert.deepEqual(derImplicitPrimitive(2, Buffer.from("a.b")), hex("82 03 612e62"));
  assert.deepEqual(derImplicitContext(0), hex("a0 00"));
  assert.deepEqual(derImplicitContext(0, hex("05 00"), hex("05 00")), hex("a0 04 0500 0500"));
  assert.throws(() => derExplicit(31, hex("05 00")), isDerError);
  for (const size of [0, 1, 127, 128, 255, 256, 65535, 65536, 70000]) {
    const der = derOctetString(Buffer.alloc(size, 7));
    const tlv = readTlv(der, 0);
    assert.equal(tlv.end - tlv.start, size);
    assert.equal(tlv.end, der.length);
  }
});

test("openssl asn1parse reads what the writer writes", () => {
  const der = derSequence(
    derSmallInteger(2),
    derInteger(hex("8f00")),
    derOid("1.2.840.10045.4.3.2"),
    derUtf8String("osm.root"),
    derPrintableString("Example"),
    derIa5String("spiffe://cluster.local/ns/a/sa/b"),
    derBoolean(true),
    derNull(),
    derBitString(hex("06"), 1),
    derOctetString(hex("cafe")),
    derUtcOrGeneralizedTime(new Date("2031-01-11T23:15:09Z")),
    derUtcOrGeneralizedTime(new Date("2051-01-11T23:15:09Z")),
    derSet(derExplicit(0, derSmallInteger(1))),
  );
  const out = execFileSync("openssl", ["asn1parse", "-inform", "DER"], { input: der, encoding: "utf8" });
  for (const expected of [
    /INTEGER\s+:02/,
    /INTEGER\s+:8F00/,
    /OBJECT\s+:ecdsa-with-SHA256/,
    /UTF8STRING\s+:osm.root/,
    /PRINTABLESTRING\s+:Example/,
    /IA5STRING\s+:spiffe:\/\/cluster.local\/ns\/a\/sa\/b/,
    /BOOLEAN\s+:255/,
    /NULL/,
    /BIT STRING/,
    /OCTET STRING\s+\[HEX DUMP\]:CAFE/,
    /UTCTIME\s+:310111231509Z/,
    /GENERALIZEDTIME\s+:20510111231509Z/,
    /cont \[ 0 \]/,
  ]) {
    assert.match(out, expected);
  }
  assert.doesNotMatch(out, /Error|error/);
});
