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
const good = jwt({ aud: ["osm-cert"], exp: now / 1000 + 3600 });
/** Expires ten seconds after the 61 s the cache test advances first. */
const soon = jwt({ aud: ["osm-cert"], exp: now / 1000 + 71 });
/** Claims our audience, but the API server's answer does not confirm it. */
const otherAudience = jwt({ aud: "osm-cert", exp: now / 1000 + 3600, n: 1 });
const unknown = jwt({ aud: ["osm-cert"], exp: now / 1000 + 3600, n: 2 });
const userToken = jwt({ aud: ["osm-cert"], exp: now / 1000 + 3600, n: 3 });
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
      [userToken, { authenticated: true, user: { username: "alice" }, audiences: ["osm-cert"] }],
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

test("rejected, wrong-audience and non-ServiceAccount tokens: UNAUTHENTICATED, only briefly remembered", async () => {
  const { authn, reviewer, advance } = setup();
  const cases: [string, RegExp][] = [
    [unknown, /rejected.*invalid bearer token/],
    [otherAudience, /audience "osm-cert"/],
    [userToken, /not to a ServiceAccount/],
  ];
  for (const [token, pattern] of cases) {
    const result = await authn.authenticate(token);
    assert.ok(
      !result.ok && result.status === "UNAUTHENTICATED" && pattern.test(result.message),
      `${token}: ${JSON.stringify(result)}`,
    );
  }
  assert.equal(authn.cacheSize, 0, "no cache poisoning");
  assert.equal(reviewer.calls, 3);
  const again = await authn.authenticate(unknown);
  assert.ok(!again.ok && /invalid bearer token/.test(again.message), "the same answer again");
  assert.equal(reviewer.calls, 3, "a definite rejection is remembered for a few seconds");
  advance(11_000);
  await authn.authenticate(unknown);
  assert.equal(reviewer.calls, 4, "and asked again after that");
});

test("tokens that cannot be ours are refused locally, without a TokenReview", async () => {
  const { authn, reviewer } = setup();
  const cases: [string, RegExp][] = [
    ["has space", /malformed/],
    ["opaque-garbage", /not a JWT/],
    ["a.b", /not a JWT/],
    [`${Buffer.from("[]").toString("base64url")}.e30.c2ln`, /not JSON/],
    [jwt({ exp: now / 1000 + 3600 }), /audience "osm-cert"/],
    [jwt({ aud: ["https://kubernetes.default.svc"], exp: now / 1000 + 3600 }), /audience "osm-cert"/],
    [jwt({ aud: "osm-cert", exp: now / 1000 - 3600 }), /expired/],
    [jwt({ aud: "osm-cert", nbf: now / 1000 + 3600 }), /not valid before/],
    [
      `${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from('{"aud":"osm-cert"}').toString("base64url")}.x`,
      /not a signed JWT/,
    ],
  ];
  for (const [token, pattern] of cases) {
    const result = await authn.authenticate(token, "10.0.0.9");
    assert.ok(!result.ok && result.status === "UNAUTHENTICATED" && pattern.test(result.message), token);
  }
  assert.equal(reviewer.calls, 0);
});

test("one peer cannot make the server flood the API server with TokenReviews", async () => {
  const { authn, reviewer, advance } = setup();
  const forged = Array.from({ length: 2_000 }, (_, i) =>
    jwt({ aud: ["osm-cert"], exp: now / 1000 + 3600, i }),
  );
  const results = await Promise.all(forged.map((token) => authn.authenticate(token, "10.0.0.66")));
  assert.equal(reviewer.calls, 20, "the burst, and nothing more");
  const exhausted = results.filter((r) => !r.ok && r.status === "RESOURCE_EXHAUSTED");
  assert.equal(exhausted.length, 2_000 - 20);
  assert.match((exhausted[0] as { message: string }).message, /retry/);
  // Another peer (a legitimate agent) is unaffected, and the attacker's budget refills slowly.
  assert.ok((await authn.authenticate(good, "10.0.0.7")).ok);
  advance(1_000);
  await Promise.all(forged.slice(0, 100).map((token) => authn.authenticate(token, "10.0.0.66")));
  assert.equal(reviewer.calls, 21 + 5, "five more after a second");
});

test("concurrent calls with one token share one TokenReview", async () => {
  const { authn, reviewer } = setup();
  const results = await Promise.all(Array.from({ length: 50 }, () => authn.authenticate(good, "10.0.0.7")));
  assert.ok(results.every((r) => r.ok));
  assert.equal(reviewer.calls, 1);
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
