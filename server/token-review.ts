// ServiceAccount-token authentication: the agent sends its projected token (audience `osm-cert`
// by default) and the Kubernetes API server says whose it is, through a TokenReview that names
// our audience. Positive answers are cached briefly, never past the token's own expiry; failures
// (API down) are never cached, so one bad moment cannot lock a workload out or in.
//
// A TokenReview costs the API server work and is rate-limited there, and anyone who reaches the
// signing port can send a bearer token. So before asking: cheap local checks (JWT shape, exp/nbf,
// our audience in `aud`), a short cache of definite rejections, one review in flight per token, and
// a per-peer budget of reviews; a peer past it gets RESOURCE_EXHAUSTED, not a review.

import { createHash } from "node:crypto";
import { isDnsLabel, isDnsSubdomain, type ServiceIdentity } from "../common/identity.js";
import type { Logger } from "../common/logger.js";
import type { Caller } from "./authn.js";

/** The slice of the Kubernetes API this needs: POST a TokenReview, get its status back. */
export interface TokenReviewer {
  review(token: string, audiences: readonly string[], signal?: AbortSignal): Promise<TokenReviewStatus>;
}

export interface TokenReviewStatus {
  readonly authenticated?: boolean;
  readonly user?: { username?: string; uid?: string; extra?: Record<string, string[]> };
  readonly audiences?: readonly string[];
  readonly error?: string;
}

export type TokenAuthnResult =
  | { readonly ok: true; readonly caller: Caller }
  | {
      readonly ok: false;
      readonly status: "UNAUTHENTICATED" | "UNAVAILABLE" | "RESOURCE_EXHAUSTED";
      readonly message: string;
    };

export interface TokenAuthenticatorOptions {
  readonly reviewer: TokenReviewer;
  readonly audience: string;
  readonly logger: Logger;
  readonly cacheTtlMs?: number;
  readonly cacheLimit?: number;
  readonly reviewTimeoutMs?: number;
  /** How long a definite rejection is remembered (default 10 s). */
  readonly negativeTtlMs?: number;
  /** Reviews one peer may cause: a burst, then this many a second (defaults 20 and 5). */
  readonly peerReviewBurst?: number;
  readonly peerReviewsPerSecond?: number;
  readonly now?: () => number;
}

/** Clock skew tolerated on exp and nbf, as the API server itself allows. */
const JWT_LEEWAY_MS = 60_000;
const MAX_PEERS_TRACKED = 10_000;

const SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:";
const POD_NAME = "authentication.kubernetes.io/pod-name";
const POD_UID = "authentication.kubernetes.io/pod-uid";

interface CacheEntry {
  readonly caller: Caller;
  readonly until: number;
}

interface Rejection {
  readonly message: string;
  readonly until: number;
}

interface PeerBudget {
  tokens: number;
  updatedAt: number;
}

export class TokenAuthenticator {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly rejections = new Map<string, Rejection>();
  private readonly inFlight = new Map<string, Promise<TokenAuthnResult>>();
  private readonly peers = new Map<string, PeerBudget>();
  private readonly ttlMs: number;
  private readonly limit: number;
  private readonly now: () => number;
  private reviewCount = 0;

  constructor(private readonly options: TokenAuthenticatorOptions) {
    this.ttlMs = options.cacheTtlMs ?? 60_000;
    this.limit = options.cacheLimit ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  /** TokenReviews sent so far. */
  get reviews(): number {
    return this.reviewCount;
  }

  /** `peer` is the caller's address (any stable string); it only keys the review budget. */
  async authenticate(token: string, peer = ""): Promise<TokenAuthnResult> {
    if (token === "" || token.length > 16_384 || /\s/.test(token)) {
      return { ok: false, status: "UNAUTHENTICATED", message: "malformed bearer token" };
    }
    const now = this.now();
    const precheck = checkJwt(token, this.options.audience, now);
    if (precheck !== null) return { ok: false, status: "UNAUTHENTICATED", message: precheck };

    const key = createHash("sha256").update(token).digest("base64url");
    const cached = this.cache.get(key);
    if (cached !== undefined) {
      if (now < cached.until) return { ok: true, caller: cached.caller };
      this.cache.delete(key);
    }
    const rejected = this.rejections.get(key);
    if (rejected !== undefined) {
      if (now < rejected.until) return { ok: false, status: "UNAUTHENTICATED", message: rejected.message };
      this.rejections.delete(key);
    }
    const pending = this.inFlight.get(key);
    if (pending !== undefined) return pending;
    if (!this.spendPeerBudget(peer, now)) {
      return {
        ok: false,
        status: "RESOURCE_EXHAUSTED",
        message: "too many token reviews from this address; retry in a few seconds",
      };
    }
    const review = this.review(token, key, now).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, review);
    return review;
  }

  private spendPeerBudget(peer: string, now: number): boolean {
    const burst = this.options.peerReviewBurst ?? 20;
    const rate = this.options.peerReviewsPerSecond ?? 5;
    let budget = this.peers.get(peer);
    if (budget === undefined) {
      if (this.peers.size >= MAX_PEERS_TRACKED) this.peers.delete(this.peers.keys().next().value as string);
      budget = { tokens: burst, updatedAt: now };
      this.peers.set(peer, budget);
    }
    budget.tokens = Math.min(burst, budget.tokens + ((now - budget.updatedAt) / 1000) * rate);
    budget.updatedAt = now;
    if (budget.tokens < 1) return false;
    budget.tokens -= 1;
    return true;
  }

  private async review(token: string, key: string, now: number): Promise<TokenAuthnResult> {
    this.reviewCount++;
    let status: TokenReviewStatus;
    try {
      status = await this.options.reviewer.review(
        token,
        [this.options.audience],
        AbortSignal.timeout(this.options.reviewTimeoutMs ?? 5_000),
      );
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.options.logger.warn({ event: "tokenreview.failed", error: message }, "TokenReview failed");
      return {
        ok: false,
        status: "UNAVAILABLE",
        message: `cannot validate the token right now (TokenReview failed: ${message}); retry later`,
      };
    }

    const refused = (message: string): TokenAuthnResult => {
      // A definite "no" from the API server: asking again within seconds would get the same answer.
      if (this.rejections.size >= this.limit) {
        this.rejections.delete(this.rejections.keys().next().value as string);
      }
      this.rejections.set(key, { message, until: now + (this.options.negativeTtlMs ?? 10_000) });
      return { ok: false, status: "UNAUTHENTICATED", message };
    };
    if (status.authenticated !== true) {
      return refused(`token rejected by the Kubernetes API server${status.error ? `: ${status.error}` : ""}`);
    }
    if (!(status.audiences ?? []).includes(this.options.audience)) {
      return refused(
        `token is not meant for audience "${this.options.audience}" (it has ${JSON.stringify(status.audiences ?? [])})`,
      );
    }
    const identity = serviceAccountOf(status.user?.username);
    if (identity === null) {
      return refused(`token belongs to "${status.user?.username ?? ""}", not to a ServiceAccount`);
    }
    const expiry = jwtExpiry(token);
    const caller: Caller = {
      identity,
      method: "service-account-token",
      podName: status.user?.extra?.[POD_NAME]?.[0],
      podUid: status.user?.extra?.[POD_UID]?.[0],
      credentialNotAfter: expiry ?? now + this.ttlMs,
    };
    const until = Math.min(now + this.ttlMs, expiry ?? Number.POSITIVE_INFINITY);
    if (until > now) {
      if (this.cache.size >= this.limit) this.cache.delete(this.cache.keys().next().value as string);
      this.cache.set(key, { caller, until });
    }
    return { ok: true, caller };
  }

  get cacheSize(): number {
    return this.cache.size;
  }
}

function serviceAccountOf(username: string | undefined): ServiceIdentity | null {
  if (username === undefined || !username.startsWith(SERVICE_ACCOUNT_PREFIX)) return null;
  const [namespace, serviceAccount, ...rest] = username.slice(SERVICE_ACCOUNT_PREFIX.length).split(":");
  if (rest.length > 0 || namespace === undefined || serviceAccount === undefined) return null;
  if (!isDnsLabel(namespace) || !isDnsSubdomain(serviceAccount)) return null;
  return { serviceAccount, namespace };
}

/**
 * Why `token` cannot be a projected ServiceAccount token for `audience` right now, judged from
 * its claims alone (nothing is verified here: only the TokenReview can accept a token), or null.
 */
export function checkJwt(token: string, audience: string, now: number): string | null {
  const parts = token.split(".");
  if (parts.length !== 3 || parts.some((part) => !/^[A-Za-z0-9_-]+$/.test(part))) {
    return "bearer token is not a JWT (header.payload.signature, base64url)";
  }
  const header = jsonObject(parts[0] as string);
  const claims = jsonObject(parts[1] as string);
  if (header === null || claims === null) return "bearer token is not a JWT (header or payload is not JSON)";
  if (typeof header.alg !== "string" || header.alg === "none") return "bearer token is not a signed JWT";
  const aud = typeof claims.aud === "string" ? [claims.aud] : claims.aud;
  if (!Array.isArray(aud) || !aud.includes(audience)) {
    return `token is not meant for audience "${audience}" (project a ServiceAccount token with audience ${audience})`;
  }
  if (typeof claims.exp === "number" && claims.exp * 1000 + JWT_LEEWAY_MS <= now) {
    return `token expired at ${new Date(claims.exp * 1000).toISOString()}`;
  }
  if (typeof claims.nbf === "number" && claims.nbf * 1000 - JWT_LEEWAY_MS > now) {
    return `token is not valid before ${new Date(claims.nbf * 1000).toISOString()}`;
  }
  return null;
}

function jsonObject(segment: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));
    return typeof value === "object" && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : null;
  } catch {
    return null;
  }
}

/**
 * The `exp` claim of a JWT, read without verifying it: the TokenReview already vouched for the
 * token, and this only bounds how long we remember that answer.
 */
export function jwtExpiry(token: string): number | null {
  const payload = token.split(".")[1];
  if (payload === undefined) return null;
  try {
    const exp = (JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { exp?: unknown }).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}
