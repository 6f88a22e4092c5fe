// Load limits on CreateCertificate (issue 10, Deliver 3): a global cap on signings in flight and a
// token bucket per authenticated identity. Past either, the call is refused at once with
// RESOURCE_EXHAUSTED, a message saying when to retry, and gRPC's `grpc-retry-pushback-ms`, which
// agents honour with jitter; refusing costs far less than the signing it saves.
//
// The in-flight cap bounds what waits on asynchronous work (TokenReviews, Vault, cert-manager): the
// memory and backend concurrency a storm can pin. Its retry hint spreads the refused demand over
// what the server has been completing: N refusals in the last second at a throughput of R/s ask
// for N/R seconds, so a storm of 10,000 comes back spread out instead of all at once.
//
// The bucket is keyed by the identity (ServiceAccount): a pod renewing at half its certificate's
// life never comes near it; an agent stuck in a loop, or one identity's pods re-asking at once
// beyond the burst, are paced. Buckets that have refilled are forgotten, so memory stays bounded.

import type { Counter, Gauge, MetricsRegistry } from "../common/metrics.js";

export interface SigningLimitsOptions {
  /** Signings (authentication included) that may be in flight at once in this process. */
  readonly maxInFlight: number;
  /** Signings one identity may start per second, on average; 0 turns the per-identity limit off. */
  readonly perIdentityRate: number;
  /** How many one identity may start at once before the rate applies. */
  readonly perIdentityBurst: number;
  readonly metrics: MetricsRegistry;
  readonly now?: () => number;
}

export interface LimitRefusal {
  readonly reason: "in_flight" | "identity_rate";
  /** When the caller may try again. */
  readonly retryAfterMs: number;
  readonly message: string;
}

/** Whatever the load, a refused caller is not asked to wait less than this or more than the cap. */
const MIN_RETRY_MS = 250;
const MAX_RETRY_MS = 30_000;
const MAX_BUCKETS = 100_000;

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export class SigningLimits {
  private inFlight = 0;
  private readonly buckets = new Map<string, Bucket>();
  private readonly now: () => number;
  private readonly gauge: Gauge;
  private readonly refused: Counter;
  /** Completions and refusals per whole second: [second, completions, refusals] of the current and last. */
  private window = { second: 0, completed: 0, refused: 0 };
  private previous = { completed: 0, refused: 0 };

  constructor(private readonly options: SigningLimitsOptions) {
    this.now = options.now ?? Date.now;
    this.gauge = options.metrics.gauge(
      "osm_cert_server_signings_in_flight",
      "CreateCertificate calls being authenticated, checked or signed right now.",
    );
    this.gauge.set(0);
    this.refused = options.metrics
      .counter(
        "osm_cert_server_signing_refused_total",
        "CreateCertificate calls refused with RESOURCE_EXHAUSTED by a load limit, by reason (in_flight, identity_rate).",
      )
      .zero({ reason: "in_flight" })
      .zero({ reason: "identity_rate" });
  }

  get inFlightCount(): number {
    return this.inFlight;
  }

  /** Takes an in-flight slot: the release function, or a refusal when all are taken. */
  enter(): (() => void) | LimitRefusal {
    const now = this.now();
    this.roll(now);
    if (this.inFlight >= this.options.maxInFlight) {
      this.window.refused++;
      this.refused.inc({ reason: "in_flight" });
      const retryAfterMs = this.spreadRetry();
      return {
        reason: "in_flight",
        retryAfterMs,
        message: `the server is signing ${this.inFlight} requests already (its limit); retry in ${formatMs(retryAfterMs)}`,
      };
    }
    this.inFlight++;
    this.gauge.set(this.inFlight);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight--;
      this.gauge.set(this.inFlight);
      this.roll(this.now());
      this.window.completed++;
    };
  }

  /** Spends one of `identity`'s tokens: null when it had one, else a refusal saying when it will. */
  charge(identity: string): LimitRefusal | null {
    const { perIdentityRate: rate, perIdentityBurst: burst } = this.options;
    if (rate <= 0) return null;
    const now = this.now();
    let bucket = this.buckets.get(identity);
    if (bucket === undefined) {
      if (this.buckets.size >= MAX_BUCKETS) this.forgetFull(now);
      bucket = { tokens: burst, updatedAt: now };
      this.buckets.set(identity, bucket);
    } else {
      bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * rate);
      bucket.updatedAt = now;
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return null;
    }
    this.refused.inc({ reason: "identity_rate" });
    const retryAfterMs = Math.max(MIN_RETRY_MS, Math.ceil(((1 - bucket.tokens) / rate) * 1000));
    return {
      reason: "identity_rate",
      retryAfterMs,
      message: `identity ${identity} asked for more than ${rate} certificates a second (burst ${burst}); retry in ${formatMs(retryAfterMs)}`,
    };
  }

  private roll(now: number): void {
    const second = Math.floor(now / 1000);
    if (second === this.window.second) return;
    this.previous =
      second === this.window.second + 1
        ? { completed: this.window.completed, refused: this.window.refused }
        : { completed: 0, refused: 0 };
    this.window = { second, completed: 0, refused: 0 };
  }

  /**
   * The refused demand of about the last second, spread over the throughput of about the last
   * second (at least the cap a second, so a quiet start does not ask for the maximum).
   */
  private spreadRetry(): number {
    const refused = this.window.refused + this.previous.refused;
    const completed = Math.max(this.window.completed, this.previous.completed, this.options.maxInFlight);
    const ms = Math.ceil((refused / completed) * 1000);
    return Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, ms));
  }

  /** Drops buckets that have refilled (they behave exactly like a new one); else the oldest. */
  private forgetFull(now: number): void {
    const { perIdentityRate: rate, perIdentityBurst: burst } = this.options;
    for (const [key, bucket] of this.buckets) {
      if (bucket.tokens + ((now - bucket.updatedAt) / 1000) * rate >= burst) this.buckets.delete(key);
    }
    if (this.buckets.size >= MAX_BUCKETS) {
      const oldest = this.buckets.keys().next().value;
      if (oldest !== undefined) this.buckets.delete(oldest);
    }
  }
}

function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}
