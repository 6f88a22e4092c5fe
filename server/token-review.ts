// ServiceAccount-token authentication: the agent sends its projected token (audience `osm-cert`
// by default) and the Kubernetes API server says whose it is, through a TokenReview that names
// our audience. Positive answers are cached briefly, never past the token's own expiry; negative
// answers and failures are never cached, so one bad moment cannot lock a workload out or in.

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
  | { readonly ok: false; readonly status: "UNAUTHENTICATED" | "UNAVAILABLE"; readonly message: string };

export interface TokenAuthenticatorOptions {
  readonly reviewer: TokenReviewer;
  readonly audience: string;
  readonly logger: Logger;
  readonly cacheTtlMs?: number;
  readonly cacheLimit?: number;
  readonly reviewTimeoutMs?: number;
  readonly now?: () => number;
}

const SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:";
const POD_NAME = "authentication.kubernetes.io/pod-name";
const POD_UID = "authentication.kubernetes.io/pod-uid";

interface CacheEntry {
  readonly caller: Caller;
  readonly until: number;
}

export class TokenAuthenticator {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly ttlMs: number;
  private readonly limit: number;
  private readonly now: () => number;

  constructor(private readonly options: TokenAuthenticatorOptions) {
    this.ttlMs = options.cacheTtlMs ?? 60_000;
    this.limit = options.cacheLimit ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  async authenticate(token: string): Promise<TokenAuthnResult> {
    if (token === "" || token.length > 16_384 || /\s/.test(token)) {
      return { ok: false, status: "UNAUTHENTICATED", message: "malformed bearer token" };
    }
    const key = createHash("sha256").update(token).digest("base64url");
    const now = this.now();
    const cached = this.cache.get(key);
    if (cached !== undefined) {
      if (now < cached.until) return { ok: true, caller: cached.caller };
      this.cache.delete(key);
    }

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

    const refused = (message: string): TokenAuthnResult => ({
      ok: false,
      status: "UNAUTHENTICATED",
      message,
    });
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
