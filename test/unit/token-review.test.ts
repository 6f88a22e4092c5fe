import assert from "node:assert/strict";
import { test } from "node:test";
import {
  jwtExpiry,
  TokenAuthenticator,
  type TokenReviewer,
  type TokenReviewStatus,
} from "../../server/token-review.js";
import { captureLog } from "../helpers/log-capture.js";

function jwt(claims: Record<string, unknown>): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "RS256" })}.${part(claims)}.c2ln`;
}

/** Answers like the API server's TokenReview, from a table of known tokens; counts calls. */
class TableReviewer implements TokenReviewer {
  calls = 0;
  failWith: Error | null = null;
  constructor(private readonly table: Map<string, TokenReviewStatus>) {}
  async review(token: string, audiences: readonly string[]): Promise<TokenReviewStatus> {
    this.calls++;
    if (this.failWith !== null) throw this.failWith;
    const known = this.table.get(token);
    if (known === undefined) return { authenticated: false, error: "invalid bearer token" };
    return { ...known, audiences: (known.audiences ?? []).filter((a) => audiences.includes(a)) };
  }
}

const now = Date.parse("2026-11-28T12:00:00Z");
const good = jwt({ exp: now / 1000 + 3600 });
const soon = jwt({ exp: now / 1000 + 10 });
const otherAudience = jwt({ exp: now / 1000 + 3600, n: 1 });
const user = {
  username: "system:serviceaccount:bookstore:bookstore-v2",
  uid: "u1",
  extra: {
    "authentication.kubernetes.io/pod-name": ["bookstore-v2-abc"],
    "authentication.kubernetes.io/pod-uid": ["11111111-2222-3333-4444-555555555555"],
  },
};

function setup() {
  const reviewer = new TableReviewer(
    new Map<string, TokenReviewStatus>([
      [good, { authenticated: true, user, audiences: ["osm-cert"] }],
      [soon, { authenticated: true, user, audiences: ["osm-cert"] }],
      [otherAudience, { authenticated: true, user, audiences: ["https://kubernetes.default.svc"] }],
      ["user-token", { authenticated: true, user: { username: "alice" }, audiences: ["osm-cert"] }],
    ]),
  );
  let clock = now;
  const authn = new TokenAuthenticator({
    reviewer,
    audience: "osm-cert",
    logger: captureLog().logger,
    now: () => clock,
  });
  return { reviewer, authn, advance: (ms: number) => (clock += ms) };
}

test("a valid token maps to its ServiceAccount, with the pod in the caller", async () => {
  const { authn } = setup();
  const result = await authn.authenticate(good);
  assert.ok(result.ok);
  assert.deepEqual(result.caller.identity, { serviceAccount: "bookstore-v2", namespace: "bookstore" });
  assert.equal(result.caller.method, "service-account-token");
  assert.equal(result.caller.podName, "bookstore-v2-abc");
  assert.equal(result.caller.podUid, "11111111-2222-3333-4444-555555555555");
});

test("positive answers are cached briefly and never past the token's expiry", async () => {
  const { authn, reviewer, advance } = setup();
  await authn.authenticate(good);
  await authn.authenticate(good);
  assert.equal(reviewer.calls, 1, "second call served from the cache");
  advance(61_000);
  await authn.authenticate(good);
  assert.equal(reviewer.calls, 2, "cache entry expired after the TTL");
  await authn.authenticate(soon);
  advance(11_000);
  await authn.authenticate(soon);
  assert.equal(reviewer.calls, 4, "a token about to expire is not served from cache past its exp");
});

test("rejected, wrong-audience, non-ServiceAccount and malformed tokens: UNAUTHENTICATED, nothing cached", async () => {
  const { authn, reviewer } = setup();
  const cases: [string, RegExp][] = [
    ["unknown-token", /rejected.*invalid bearer token/],
    [otherAudience, /audience "osm-cert"/],
    ["user-token", /not to a ServiceAccount/],
    ["has space", /malformed/],
  ];
  for (const [token, pattern] of cases) {
    const result = await authn.authenticate(token);
    assert.ok(
      !result.ok && result.status === "UNAUTHENTICATED" && pattern.test(result.message),
      `${token}: ${JSON.stringify(result)}`,
    );
  }
  assert.equal(authn.cacheSize, 0, "no cache poisoning");
  const before = reviewer.calls;
  await authn.authenticate("unknown-token");
  assert.equal(reviewer.calls, before + 1, "a rejection is asked again, not remembered");
});

test("TokenReview failures are UNAVAILABLE (retryable) and nothing is cached", async () => {
  const { authn, reviewer } = setup();
  reviewer.failWith = new Error("503 Service Unavailable");
  const result = await authn.authenticate(good);
  assert.ok(!result.ok && result.status === "UNAVAILABLE" && /retry/.test(result.message));
  assert.equal(authn.cacheSize, 0);
  reviewer.failWith = null;
  assert.ok((await authn.authenticate(good)).ok, "recovers once the API answers");
});

test("jwtExpiry reads exp, and tolerates tokens that are not JWTs", () => {
  assert.equal(jwtExpiry(jwt({ exp: 100 })), 100_000);
  assert.equal(jwtExpiry("opaque"), null);
  assert.equal(jwtExpiry("a.!!!.c"), null);
});
