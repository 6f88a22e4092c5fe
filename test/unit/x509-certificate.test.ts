import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createPrivateKey, generateKeyPair as generateKeyPairCallback, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { promisify } from "node:util";
import { generateKeyPair, type KeyAlgorithm } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import {
  buildCertificate,
  CertificateError,
  type CertificateFields,
  certificateSpkiDer,
  certificateSubjectDer,
  encodeName,
  ext,
  ipAddressBytes,
  keyIdentifier,
  randomSerialNumber,
  signerFor,
} from "../../common/x509/certificate.js";
import { createCsr, parseCsrDer } from "../../common/x509/csr.js";
import { derImplicitPrimitive } from "../../common/x509/der.js";
import { OID } from "../../common/x509/oids.js";
import { x509 } from "../helpers/peculiar.js";

const dir = mkdtempSync(join(tmpdir(), "osm-cert-x509-cert-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const isCertificateError = (e: unknown): boolean =>
  e instanceof CertificateError && e.code === "ERR_OSM_CERT_X509";
const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ""), "hex");

const SERVICE_CN = "bookstore-v2.bookstore.cluster.local";
const SPIFFE = "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2";
const HOUR = 3_600_000;

interface Ca {
  readonly der: Buffer;
  readonly pem: string;
  readonly keyId: Buffer;
  readonly signer: ReturnType<typeof signerFor>;
}

async function makeRoot(alg: KeyAlgorithm, commonName = "osm.root"): Promise<Ca> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  const spki = publicKey.export({ format: "der", type: "spki" });
  const keyId = keyIdentifier(spki);
  const name = encodeName({ commonName, organization: "Open Service Mesh" });
  const now = Date.now();
  const signer = signerFor(privateKey);
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: name,
      subject: name,
      spki,
      notBefore: new Date(now - HOUR),
      notAfter: new Date(now + 87_600 * HOUR),
      extensions: [
        ext.basicConstraints(true),
        ext.keyUsage(["keyCertSign", "cRLSign"]),
        ext.subjectKeyIdentifier(keyId),
      ],
    },
    signer,
  );
  return { der, pem: encodePem("CERTIFICATE", der), keyId, signer };
}

async function serviceLeaf(
  ca: Ca,
  overrides: Partial<CertificateFields> = {},
  leafAlg: KeyAlgorithm = "ecdsa-p256",
) {
  const { privateKey } = await generateKeyPair(leafAlg);
  const csr = parseCsrDer(
    createCsr({ privateKey, commonName: SERVICE_CN, dnsNames: [SERVICE_CN], uris: [SPIFFE] }),
  );
  const now = Date.now();
  const fields: CertificateFields = {
    serialNumber: randomSerialNumber(),
    issuer: certificateSubjectDer(ca.der),
    subject: encodeName({ commonName: SERVICE_CN }),
    spki: csr.publicKey.spki,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 24 * HOUR),
    extensions: [
      ext.basicConstraints(false),
      ext.keyUsage(["digitalSignature", "keyEncipherment"]),
      ext.extKeyUsage(["serverAuth", "clientAuth"]),
      ext.subjectAltName({ dns: csr.dnsNames, uris: csr.uris, ips: ["10.0.0.7", "2001:db8::7"] }),
      ext.subjectKeyIdentifier(keyIdentifier(csr.publicKey.spki)),
      ext.authorityKeyIdentifier(ca.keyId),
    ],
    ...overrides,
  };
  const der = buildCertificate(fields, ca.signer);
  return { der, pem: encodePem("CERTIFICATE", der), fields, privateKey };
}

function opensslVerify(rootPem: string, leafPem: string, extra: string[] = []): string {
  const root = join(dir, "root.pem");
  const leaf = join(dir, "leaf.pem");
  writeFileSync(root, rootPem);
  writeFileSync(leaf, leafPem);
  const r = spawnSync("openssl", ["verify", "-x509_strict", ...extra, "-CAfile", root, leaf], {
    encoding: "utf8",
  });
  return `${r.stdout}${r.stderr}`.trim() + (r.status === 0 ? "" : ` (exit ${r.status})`);
}

test("openssl verify accepts a root and a leaf built here, for every CA key type", async () => {
  for (const alg of ["ecdsa-p256", "ecdsa-p384", "rsa-2048"] as const) {
    const root = await makeRoot(alg);
    const leaf = await serviceLeaf(root);
    const leafFile = join(dir, "leaf.pem");
    assert.equal(opensslVerify(root.pem, leaf.pem), `${leafFile}: OK`, alg);
    assert.equal(opensslVerify(root.pem, leaf.pem, ["-purpose", "sslserver"]), `${leafFile}: OK`, alg);
    assert.equal(opensslVerify(root.pem, leaf.pem, ["-purpose", "sslclient"]), `${leafFile}: OK`, alg);
    assert.equal(opensslVerify(root.pem, root.pem), `${leafFile}: OK`, `${alg} root verifies itself`);
    // A leaf from another root must not verify: openssl is actually checking something.
    assert.match(
      opensslVerify((await makeRoot("ecdsa-p256")).pem, leaf.pem),
      /unable to get local issuer|error/,
    );
  }
  // An RSA leaf under an EC root (EC leaves under RSA and P-384 roots are covered above).
  const ecRoot = await makeRoot("ecdsa-p256");
  assert.match(opensslVerify(ecRoot.pem, (await serviceLeaf(ecRoot, {}, "rsa-2048")).pem), /: OK$/);
});

test("node's X509Certificate and @peculiar/x509 read back every field", async () => {
  const root = await makeRoot("ecdsa-p256");
  const notBefore = new Date("2030-03-04T05:06:07.890Z");
  const notAfter = new Date("2030-03-05T05:06:07.890Z");
  const serialNumber = hex("4a5b6c7d8e9fa0b1c2d3e4f506172839");
  const leaf = await serviceLeaf(root, { notBefore, notAfter, serialNumber });

  const node = new X509Certificate(leaf.der);
  assert.equal(node.subject, `CN=${SERVICE_CN}`);
  assert.equal(node.issuer, "O=Open Service Mesh\nCN=osm.root");
  assert.equal(node.serialNumber, "4A5B6C7D8E9FA0B1C2D3E4F506172839");
  assert.equal(
    node.subjectAltName,
    `DNS:${SERVICE_CN}, URI:${SPIFFE}, IP Address:10.0.0.7, IP Address:2001:DB8:0:0:0:0:0:7`,
  );
  assert.equal(
    new Date(node.validFrom).toISOString(),
    "2030-03-04T05:06:07.000Z",
    "sub-second part is truncated",
  );
  assert.equal(new Date(node.validTo).toISOString(), "2030-03-05T05:06:07.000Z");
  assert.deepEqual(
    node.keyUsage,
    ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"],
    "node calls the EKU list keyUsage",
  );
  assert.equal(node.ca, false);
  assert.equal(node.checkHost(SERVICE_CN), SERVICE_CN);
  assert.equal(node.checkIP("10.0.0.7"), "10.0.0.7");
  const nodeRoot = new X509Certificate(root.der);
  assert.equal(nodeRoot.ca, true);
  assert.equal(node.checkIssued(nodeRoot), true);
  assert.equal(node.verify(nodeRoot.publicKey), true);
  assert.equal(nodeRoot.verify(nodeRoot.publicKey), true);
  assert.deepEqual(node.publicKey.export({ format: "der", type: "spki" }), leaf.fields.spki);

  const cert = new x509.X509Certificate(leaf.der);
  assert.equal(cert.subject, `CN=${SERVICE_CN}`);
  assert.equal(cert.issuer, "O=Open Service Mesh, CN=osm.root");
  assert.equal(cert.serialNumber, "4a5b6c7d8e9fa0b1c2d3e4f506172839");
  assert.equal(cert.notBefore.toISOString(), "2030-03-04T05:06:07.000Z");
  assert.equal(cert.notAfter.toISOString(), "2030-03-05T05:06:07.000Z");
  assert.deepEqual(cert.signatureAlgorithm, { name: "ECDSA", hash: { name: "SHA-256" } });
  assert.equal(
    await cert.verify({ publicKey: new x509.X509Certificate(root.der).publicKey, signatureOnly: true }),
    true,
  );

  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  assert.ok(bc);
  assert.equal(bc.ca, false);
  assert.equal(bc.critical, true);
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  assert.ok(ku);
  assert.equal(ku.usages, x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment);
  assert.equal(ku.critical, true);
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  assert.ok(eku);
  assert.deepEqual(Array.from(eku.usages), [OID.serverAuth, OID.clientAuth]);
  assert.equal(eku.critical, false);
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  assert.ok(san);
  assert.deepEqual(san.names.toJSON(), [
    { type: "dns", value: SERVICE_CN },
    { type: "url", value: SPIFFE },
    { type: "ip", value: "10.0.0.7" },
    { type: "ip", value: "2001:db8::7" },
  ]);
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension);
  assert.ok(ski);
  assert.equal(ski.keyId, keyIdentifier(leaf.fields.spki).toString("hex"));
  const aki = cert.getExtension(x509.AuthorityKeyIdentifierExtension);
  assert.ok(aki);
  assert.equal(aki.keyId, root.keyId.toString("hex"));
  assert.equal(aki.certId, undefined);

  const rootCert = new x509.X509Certificate(root.der);
  const rootKu = rootCert.getExtension(x509.KeyUsagesExtension);
  assert.equal(rootKu?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  assert.equal(rootCert.getExtension(x509.BasicConstraintsExtension)?.ca, true);
  assert.equal(await rootCert.isSelfSigned(), true);
});

test("validity crosses into GeneralizedTime from 2050 and round-trips exactly", async () => {
  const root = await makeRoot("ecdsa-p256");
  for (const [notBefore, notAfter] of [
    ["2049-12-31T23:59:58Z", "2049-12-31T23:59:59Z"],
    ["2049-12-31T23:59:59Z", "2050-01-01T00:00:00Z"],
    ["2026-01-01T00:00:00Z", "2126-06-30T12:34:56Z"],
  ] as const) {
    const leaf = await serviceLeaf(root, { notBefore: new Date(notBefore), notAfter: new Date(notAfter) });
    const node = new X509Certificate(leaf.der);
    assert.equal(new Date(node.validFrom).toISOString(), new Date(notBefore).toISOString());
    assert.equal(new Date(node.validTo).toISOString(), new Date(notAfter).toISOString());
    const theirs = new x509.X509Certificate(leaf.der);
    assert.equal(theirs.notAfter.toISOString(), new Date(notAfter).toISOString());
    const text = execFileSync("openssl", ["x509", "-noout", "-enddate"], {
      input: leaf.pem,
      encoding: "utf8",
    });
    assert.match(text, new RegExp(`notAfter=.* ${new Date(notAfter).getUTCFullYear()} GMT`));
  }
});

test("keyIdentifier is RFC 5280 method 1, as OpenSSL computes subjectKeyIdentifier", async () => {
  const key = join(dir, "ossl.key");
  const crt = join(dir, "ossl.crt");
  for (const newkey of [
    ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    ["-newkey", "rsa:2048"],
  ]) {
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-nodes",
        ...newkey,
        "-keyout",
        key,
        "-out",
        crt,
        "-subj",
        "/C=US/O=Acme/CN=acme root",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-days",
        "1",
      ],
      {
        stdio: "pipe",
      },
    );
    const pem = readFileSync(crt, "utf8");
    const der = new X509Certificate(pem).raw;
    const theirs = new x509.X509Certificate(pem).getExtension(x509.SubjectKeyIdentifierExtension);
    assert.ok(theirs);
    const spki = certificateSpkiDer(der);
    assert.equal(keyIdentifier(spki).toString("hex"), theirs.keyId);
    assert.deepEqual(spki, new X509Certificate(pem).publicKey.export({ format: "der", type: "spki" }));

    // The subject is returned byte-for-byte (PrintableString here), so a child's issuer matches it.
    const subject = certificateSubjectDer(der);
    assert.ok(der.includes(subject));
    assert.equal(new x509.Name(subject).toString(), "C=US, O=Acme, CN=acme root");
    const { publicKey } = await generateKeyPair("ecdsa-p256");
    const leaf = buildCertificate(
      {
        serialNumber: randomSerialNumber(),
        issuer: subject,
        subject: encodeName({ commonName: "child" }),
        spki: publicKey.export({ format: "der", type: "spki" }),
        notBefore: new Date(Date.now() - HOUR),
        notAfter: new Date(Date.now() + HOUR),
        extensions: [ext.authorityKeyIdentifier(keyIdentifier(spki))],
      },
      signerFor(createPrivateKey(readFileSync(key, "utf8"))),
    );
    assert.match(opensslVerify(pem, encodePem("CERTIFICATE", leaf)), /: OK$/);
  }
  assert.throws(() => keyIdentifier(hex("3000")), isCertificateError);
  assert.throws(() => certificateSubjectDer(hex("300300")), isCertificateError);
  const trailing = Buffer.concat([(await makeRoot("ecdsa-p256")).der, hex("00")]);
  assert.throws(() => certificateSpkiDer(trailing), isCertificateError);
});

test("extensions encode to the exact DER RFC 5280 prescribes", async () => {
  assert.deepEqual(ext.basicConstraints(false), hex("30 0c 0603551d13 0101ff 0402 3000"));
  assert.deepEqual(ext.basicConstraints(true), hex("30 0f 0603551d13 0101ff 0405 3003 0101ff"));
  assert.deepEqual(ext.basicConstraints(true, 0), hex("30 12 0603551d13 0101ff 0408 3006 0101ff 020100"));
  assert.deepEqual(
    ext.keyUsage(["digitalSignature", "keyEncipherment"]),
    hex("30 0e 0603551d0f 0101ff 0404 030205a0"),
  );
  assert.deepEqual(ext.keyUsage(["keyCertSign", "cRLSign"]), hex("30 0e 0603551d0f 0101ff 0404 03020106"));
  assert.deepEqual(ext.keyUsage(["digitalSignature"]), hex("30 0e 0603551d0f 0101ff 0404 03020780"));
  assert.deepEqual(
    ext.extKeyUsage(["serverAuth", "clientAuth"]),
    hex("30 1d 0603551d25 0416 3014 06082b06010505070301 06082b06010505070302"),
  );
  assert.deepEqual(ext.subjectKeyIdentifier(hex("0102")), hex("30 0b 0603551d0e 0404 0402 0102"));
  assert.deepEqual(ext.authorityKeyIdentifier(hex("0102")), hex("30 0d 0603551d23 0406 3004 8002 0102"));
  assert.deepEqual(ext.authorityKeyIdentifier(hex("0102")), ext.authorityKeyIdentifier(hex("0102")));
  assert.deepEqual(ext.authorityKeyIdentifier(hex("0304")), hex("30 0d 0603551d23 0406 3004 8002 0304"));
  assert.deepEqual(
    ext.subjectAltName({ dns: ["a"], uris: ["u:"] }),
    hex("30 10 0603551d11 0409 3007 820161 8602753a"),
  );

  assert.throws(() => ext.keyUsage([]), isCertificateError);
  assert.throws(() => ext.extKeyUsage([]), isCertificateError);
  assert.throws(() => ext.basicConstraints(false, 0), isCertificateError);
  assert.throws(() => ext.basicConstraints(true, -1), isCertificateError);
  assert.throws(() => ext.subjectAltName({}), isCertificateError);
  assert.throws(() => ext.subjectAltName({ dns: ["bücher.example"] }), isCertificateError);
  assert.throws(() => ext.subjectAltName({ dns: [""] }), isCertificateError);
  assert.throws(() => ext.subjectKeyIdentifier(Buffer.alloc(0)), isCertificateError);
});

test("IP SANs encode as @peculiar/x509 encodes them", async () => {
  for (const ip of [
    "10.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "::1",
    "2001:db8::",
    "2001:db8::7",
    "1:2:3:4:5:6:7:8",
    "fe80::1:2:3:4:5",
    "::ffff:10.1.2.3",
    "64:ff9b::192.0.2.33",
    "2001:DB8:0:0:1:0:0:1",
  ]) {
    const theirs = Buffer.from(
      new x509.GeneralName("ip", ip.includes(".") && ip.includes(":") ? expandMixed(ip) : ip).rawData,
    );
    assert.deepEqual(derImplicitPrimitive(7, ipAddressBytes(ip)), theirs, ip);
  }
  for (const bad of [
    "10.0.0",
    "10.0.0.256",
    "01.2.3.4",
    "::g",
    "1::2::3",
    "fe80::1%eth0",
    "example.com",
    "",
  ]) {
    assert.throws(() => ipAddressBytes(bad), isCertificateError, bad);
  }
});

/** @peculiar/x509 cannot parse an embedded IPv4 tail, so the reference is given in pure hex. */
function expandMixed(ip: string): string {
  const at = ip.lastIndexOf(":");
  const [a, b, c, d] = ip
    .slice(at + 1)
    .split(".")
    .map(Number) as [number, number, number, number];
  return `${ip.slice(0, at + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
}

test("names are O then CN, as UTF8String", async () => {
  const name = encodeName({ commonName: "osm.root", organization: "Open Service Mesh" });
  assert.equal(new x509.Name(name).toString(), "O=Open Service Mesh, CN=osm.root");
  assert.deepEqual(
    name,
    hex(
      "30 2f 311a 3018 060355040a 0c11 4f70656e2053657276696365204d657368 3111 300f 0603550403 0c08 6f736d2e726f6f74",
    ),
  );
  assert.equal(new x509.Name(encodeName({ commonName: "ünï.example" })).toString(), "CN=ünï.example");
  assert.throws(() => encodeName({ commonName: "" }), isCertificateError);
  assert.throws(() => encodeName({ commonName: "x", organization: "" }), isCertificateError);
});

test("serial numbers are random, positive, non-zero and 16 octets", async () => {
  const seen = new Set<string>();
  for (let i = 0; i < 2000; i++) {
    const serial = randomSerialNumber();
    assert.equal(serial.length, 16);
    assert.equal((serial[0] as number) & 0xc0, 0x40);
    seen.add(serial.toString("hex"));
  }
  assert.equal(seen.size, 2000);
});

test("buildCertificate refuses fields that would make an invalid certificate", async () => {
  const root = await makeRoot("ecdsa-p256");
  const now = Date.now();
  const bad: [string, Partial<CertificateFields>][] = [
    ["zero serial", { serialNumber: hex("0000") }],
    ["21-octet serial", { serialNumber: Buffer.alloc(21, 0x11) }],
    ["notAfter before notBefore", { notBefore: new Date(now), notAfter: new Date(now - 1) }],
    ["equal times", { notBefore: new Date(now), notAfter: new Date(now) }],
    ["invalid date", { notBefore: new Date(Number.NaN) }],
    ["issuer not a Name", { issuer: hex("0500") }],
    ["subject with trailing bytes", { subject: Buffer.concat([encodeName({ commonName: "x" }), hex("00")]) }],
    ["spki not DER", { spki: hex("30") }],
  ];
  for (const [what, overrides] of bad)
    await assert.rejects(serviceLeaf(root, overrides), isCertificateError, what);
  // 20 octets with the top bit set still fits: the sign octet does not count against RFC 5280's limit.
  await assert.doesNotReject(serviceLeaf(root, { serialNumber: Buffer.alloc(20, 0x7f) }));
  // No extensions at all is a v3 certificate without the [3] field.
  const plain = await serviceLeaf(root, { extensions: [] });
  assert.equal(new X509Certificate(plain.der).subject, `CN=${SERVICE_CN}`);
});

test("signerFor picks the hash and AlgorithmIdentifier from the CA key", async () => {
  const p256 = signerFor((await generateKeyPair("ecdsa-p256")).privateKey);
  assert.equal(p256.hash, "sha256");
  assert.deepEqual(p256.algorithmIdentifier, hex("300a 0608 2a8648ce3d040302"));
  const p384 = signerFor((await generateKeyPair("ecdsa-p384")).privateKey);
  assert.equal(p384.hash, "sha384");
  assert.deepEqual(p384.algorithmIdentifier, hex("300a 0608 2a8648ce3d040303"));
  const rsaKey = (await generateKeyPair("rsa-2048")).privateKey;
  const rsa = signerFor(rsaKey);
  assert.equal(rsa.hash, "sha256");
  assert.deepEqual(rsa.algorithmIdentifier, hex("300d 0609 2a864886f70d01010b 0500"));
  assert.equal(signerFor(rsaKey), rsa, "one signer per key");
  const ed25519 = await promisify(generateKeyPairCallback)("ed25519");
  assert.throws(() => signerFor(ed25519.privateKey), isCertificateError);
  const p521 = await promisify(generateKeyPairCallback)("ec", { namedCurve: "P-521" });
  assert.throws(() => signerFor(p521.privateKey), isCertificateError);
  const p256Public = (await generateKeyPair("ecdsa-p256")).publicKey;
  assert.throws(() => signerFor(p256Public), isCertificateError);
});
