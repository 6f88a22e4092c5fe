import assert from "node:assert/strict";
import { test } from "node:test";
import {
  bootstrapCommonName,
  IdentityError,
  makeIdentity,
  parseBootstrapCommonName,
  parseSpiffeId,
  serviceCommonName,
  spiffeId,
  validateTrustDomain,
  webhookCommonName,
} from "../../common/identity.js";

const bookstore = makeIdentity("bookstore-v2", "bookstore");
const uid = "7b2359d7-2a9b-4c7e-9d3f-0123456789ab";

test("names follow DESIGN.md §2", () => {
  assert.equal(serviceCommonName(bookstore, "cluster.local"), "bookstore-v2.bookstore.cluster.local");
  assert.equal(spiffeId(bookstore, "cluster.local"), "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2");
  assert.equal(bootstrapCommonName(uid, bookstore), `${uid}.bookstore-v2.bookstore`);
  assert.equal(webhookCommonName("osm-controller", "osm-system"), "osm-controller.osm-system.svc");
});

test("SPIFFE IDs round-trip and foreign ones are refused", () => {
  assert.deepEqual(parseSpiffeId(spiffeId(bookstore, "example.org"), "example.org"), bookstore);
  assert.equal(parseSpiffeId(spiffeId(bookstore, "example.org"), "cluster.local"), null);
  assert.equal(parseSpiffeId("spiffe://cluster.local/ns/a/sa/b/extra", "cluster.local"), null);
  assert.equal(parseSpiffeId("spiffe://cluster.local/ns/A/sa/b", "cluster.local"), null);
  assert.equal(parseSpiffeId("spiffe://cluster.local/ns/a/xx/b", "cluster.local"), null);
});

test("bootstrap CNs parse even when the ServiceAccount name has dots", () => {
  const dotted = makeIdentity("api.v1", "shop");
  assert.deepEqual(parseBootstrapCommonName(bootstrapCommonName(uid, dotted)), {
    podUid: uid,
    identity: dotted,
  });
  assert.equal(parseBootstrapCommonName("bookstore-v2.bookstore.cluster.local"), null);
  assert.equal(parseBootstrapCommonName(`${uid}.bookstore`), null);
  assert.equal(parseBootstrapCommonName("not-a-uuid.sa.ns"), null);
});

test("invalid names are refused with the offending value", () => {
  assert.throws(
    () => makeIdentity("Bad_SA", "ns"),
    (e: unknown) => e instanceof IdentityError && e.message.includes("Bad_SA"),
  );
  assert.throws(() => makeIdentity("sa", "has.dot"), IdentityError);
  assert.throws(() => bootstrapCommonName("xyz", bookstore), IdentityError);
  assert.throws(() => validateTrustDomain("Cluster.Local"), IdentityError);
  assert.equal(validateTrustDomain("mesh.example.com"), "mesh.example.com");
});
