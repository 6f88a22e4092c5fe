// Operator renew-now orders (issue 9): scopes match exactly what they name, the stored form is read
// back whole or refused whole with the fault named, old orders are pruned, and the order book gives
// each identity the newest order that concerns it (the rotation's included), announcing each once.

import assert from "node:assert/strict";
import { test } from "node:test";
import { makeIdentity } from "../../common/identity.js";
import { RenewOrderBook } from "../../server/renew/renew-order-book.js";
import {
  MAX_ORDERS,
  matchesScope,
  newOrder,
  ORDER_RETENTION_MS,
  parseIdentityScope,
  parseOrders,
  serializeOrders,
  withOrder,
} from "../../server/renew/renew-orders.js";

const v1 = makeIdentity("bookstore-v1", "bookstore");
const v2 = makeIdentity("bookstore-v2", "bookstore");
const buyer = makeIdentity("bookbuyer", "bookbuyer");

test("scopes match exactly what they name", () => {
  assert.ok(matchesScope({ kind: "all" }, buyer));
  assert.ok(matchesScope({ kind: "namespace", namespace: "bookstore" }, v2));
  assert.ok(!matchesScope({ kind: "namespace", namespace: "bookstore" }, buyer));
  const scope = parseIdentityScope("bookstore/bookstore-v1");
  assert.ok(matchesScope(scope, v1));
  assert.ok(!matchesScope(scope, v2));
  // A service account of the same name in another namespace is another identity.
  assert.ok(!matchesScope(scope, makeIdentity("bookstore-v1", "other")));
  for (const bad of ["bookstore", "a/b/c", "Bookstore/x", "/x", "x/", "a b/c"]) {
    assert.throws(() => parseIdentityScope(bad), /NAMESPACE\/SERVICE-ACCOUNT/);
  }
});

test("stored orders round-trip; anything else is refused whole, naming the fault", () => {
  const orders = [
    newOrder({ kind: "all" }, 60_000),
    newOrder(parseIdentityScope("bookstore/bookstore-v1"), 0),
  ];
  assert.deepEqual(parseOrders(serializeOrders(orders)), orders);
  const cases: [string, RegExp][] = [
    ["not json", /not JSON/],
    ['{"orders": []}', /version/],
    [
      '{"version":1,"orders":[{"id":"a","scope":{"kind":"all"},"before":"yesterday","windowMs":1}]}',
      /order 0: before/,
    ],
    [
      '{"version":1,"orders":[{"id":"a","scope":{"kind":"all"},"before":"2026-01-01T00:00:00Z","windowMs":-1}]}',
      /windowMs/,
    ],
    [
      '{"version":1,"orders":[{"id":"a","scope":{"kind":"namespace","namespace":"Bad!"},"before":"2026-01-01T00:00:00Z","windowMs":1}]}',
      /scope must be/,
    ],
    ['{"version":1,"orders":[{"scope":{"kind":"all"},"before":"2026-01-01T00:00:00Z","windowMs":1}]}', /id/],
  ];
  for (const [text, message] of cases) assert.throws(() => parseOrders(text), message, text);
  assert.throws(() => newOrder({ kind: "all" }, 2 * 86_400_000), /window/);
});

test("adding an order prunes expired ones and keeps at most the newest MAX_ORDERS", () => {
  const now = Date.now();
  const old = newOrder({ kind: "all" }, 1, new Date(now - ORDER_RETENTION_MS - 1));
  const recent = newOrder({ kind: "all" }, 1, new Date(now - 1_000));
  const added = newOrder({ kind: "all" }, 1, new Date(now));
  assert.deepEqual(withOrder([old, recent], added, now), [recent, added]);
  let many: ReturnType<typeof withOrder> = [];
  for (let i = 0; i < MAX_ORDERS + 10; i++)
    many = withOrder(many, newOrder({ kind: "all" }, 1, new Date(now + i)), now);
  assert.equal(many.length, MAX_ORDERS);
  assert.equal(many.at(-1)?.before.getTime(), now + MAX_ORDERS + 9);
});

test("the book gives each identity the newest order that concerns it, and announces each order once", () => {
  const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s));
  let rotation: { before: Date; windowMs: number } | null = { before: t(10), windowMs: 5_000 };
  const book = new RenewOrderBook(() => rotation);
  const announced: string[] = [];
  book.onNewOrders((orders) => announced.push(...orders.map((o) => o.id)));
  assert.deepEqual(book.orderFor(buyer), rotation, "the rotation's order concerns everyone");

  const ns = newOrder({ kind: "namespace", namespace: "bookstore" }, 1_000, t(20));
  const id = newOrder(parseIdentityScope("bookstore/bookstore-v1"), 2_000, t(30));
  book.replace([ns, id]);
  book.replace([ns, id]); // read again (a poll after a watch): nothing new
  assert.deepEqual(announced, [ns.id, id.id]);
  assert.deepEqual(book.orderFor(v1), { before: t(30), windowMs: 2_000 });
  assert.deepEqual(book.orderFor(v2), { before: t(20), windowMs: 1_000 });
  assert.deepEqual(book.orderFor(buyer), { before: t(10), windowMs: 5_000 });
  // A later rotation order wins where it is newer.
  rotation = { before: t(25), windowMs: 9_000 };
  assert.deepEqual(book.orderFor(v2), rotation);
  assert.deepEqual(book.orderFor(v1), { before: t(30), windowMs: 2_000 });
  rotation = null;
  book.replace([]);
  assert.equal(book.orderFor(v1), null);
  book.replace([ns]); // gone and back (a ConfigMap deleted and restored): not announced again
  assert.deepEqual(announced, [ns.id, id.id]);
});
