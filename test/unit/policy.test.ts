import assert from "node:assert/strict";
import { test } from "node:test";
import { makeIdentity } from "../../common/identity.js";
import type { ParsedCsr } from "../../common/x509/csr.js";
import { decideServiceCertificate, type PolicyLimits } from "../../server/policy.js";

const caller = makeIdentity("bookstore-v2", "bookstore");
const CN = "bookstore-v2.bookstore.cluster.local";
const URI = "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2";
const limits: PolicyLimits = {
  trustDomain: "cluster.local",
  maxValidityMs: 86_400_000,
  minValidityMs: 1_000,
  reservedDnsNames: new Set(["osm-cert.osm-system.svc.cluster.local"]),
};

function csr(overrides: Partial<ParsedCsr> = {}): ParsedCsr {
  return {
    der: Buffer.alloc(0),
    subjectCommonName: CN,
    subjectAttributes: [{ oid: "2.5.4.3", value: CN }],
    dnsNames: [CN],
    uris: [URI],
    ipAddresses: [],
    emailAddresses: [],
    otherSanCount: 0,
    requestsCa: false,
    requestedExtensionOids: [],
    publicKey: { spki: Buffer.alloc(0), algorithm: "ec", curve: "P-256" },
    signatureAlgorithmOid: "1.2.840.10045.4.3.2",
    ...overrides,
  };
}

test("the caller's own names pass; names always come from the caller, not the CSR", () => {
  const decision = decideServiceCertificate(
    caller,
    csr({ subjectCommonName: null, subjectAttributes: [], dnsNames: [], uris: [] }),
    3_600_000,
    limits,
  );
  assert.deepEqual(decision, {
    ok: true,
    commonName: CN,
    dnsNames: [CN],
    uris: [URI],
    validityMs: 3_600_000,
    clamped: false,
  });
});

test("anything naming someone else, or asking for CA:true, is PERMISSION_DENIED with both identities", () => {
  const cases: [Partial<ParsedCsr>, RegExp][] = [
    [{ requestsCa: true }, /CA:true/],
    [{ subjectCommonName: "x.y.cluster.local" }, /CN "x\.y\.cluster\.local"/],
    [{ subjectAttributes: [{ oid: "2.5.4.10", value: "evil" }] }, /2\.5\.4\.10/],
    [{ dnsNames: [CN, "other.svc"] }, /DNS SAN "other\.svc"/],
    [{ uris: ["spiffe://cluster.local/ns/x/sa/y"] }, /URI SAN/],
    [{ ipAddresses: ["10.0.0.1"] }, /IP SAN/],
    [{ emailAddresses: ["a@b"] }, /e-mail/],
    [{ otherSanCount: 1 }, /SANs of a kind/],
  ];
  for (const [overrides, pattern] of cases) {
    const decision = decideServiceCertificate(caller, csr(overrides), 0, limits);
    assert.equal(decision.ok, false);
    if (!decision.ok) {
      assert.equal(decision.code, "PERMISSION_DENIED");
      assert.match(decision.message, pattern);
      assert.match(decision.message, /bookstore-v2\.bookstore/);
    }
  }
});

test("validity: default when unset, clamped above the maximum, refused below the minimum", () => {
  const unset = decideServiceCertificate(caller, csr(), 0, limits);
  assert.ok(unset.ok && unset.validityMs === 86_400_000 && !unset.clamped);
  const long = decideServiceCertificate(caller, csr(), 10 * 86_400_000, limits);
  assert.ok(long.ok && long.validityMs === 86_400_000 && long.clamped);
  const short = decideServiceCertificate(caller, csr(), 10, limits);
  assert.ok(!short.ok && short.code === "INVALID_ARGUMENT" && /minimum/.test(short.message));
});
