// Leader election over a coordination.k8s.io/v1 Lease, with client-go's leaderelection semantics,
// so that one server replica at a time does the cluster-wide writes (trust-bundle distribution)
// while every replica keeps signing. The API server is the referee: a Lease is taken by create
// (AlreadyExists: someone was first) or by an update carrying the resourceVersion we read
// (Conflict: someone wrote since). A holder's lease is judged expired by OUR clock, counted from
// when WE last saw its record change, never by the remote renewTime, so clock skew between nodes
// cannot make two leaders. A leader that cannot renew within renewDeadline (< leaseDuration) steps
// down before anyone else may take over.

import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../common/logger.js";
import type { Gauge, MetricsRegistry } from "../../common/metrics.js";
import {
  isAlreadyExists,
  isConflict,
  isForbidden,
  isNotFound,
  type KubeClient,
  LEASES,
  type Lease,
  type Verb,
} from "./client.js";
import { ForbiddenLog } from "./forbidden-log.js";

export const DEFAULT_LEADER_LEASE_NAME = "osm-cert-leader";
export const DEFAULT_LEASE_DURATION_SECONDS = 15;
export const DEFAULT_RENEW_DEADLINE_MS = 10_000;
export const DEFAULT_RETRY_PERIOD_MS = 2_000;
/** client-go's JitterFactor: followers retry after retryPeriod × (1 + 1.2 × random). */
const JITTER_FACTOR = 1.2;
/** Re-reads after a Conflict or a vanished Lease before an attempt counts as failed. */
const ROUNDS_PER_ATTEMPT = 3;

/** Time as the elector sees it; tests pass a manual one. */
export interface ElectionClock {
  /** Wall time in ms since the epoch: what renewTime and acquireTime record. */
  now(): number;
  /** A clock that never jumps, in ms: what lease expiry and the renew deadline are judged by. */
  monotonic(): number;
  /** Resolves after `ms`, or as soon as `signal` aborts (never rejects). */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

export const systemClock: ElectionClock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  sleep: (ms, signal) => sleep(ms, undefined, { signal }).catch(() => undefined),
};

export interface LeaderElectorOptions {
  readonly client: Pick<KubeClient, "get" | "create" | "update">;
  /** Where the Lease lives: the OSM namespace. */
  readonly namespace: string;
  /** Default `osm-cert-leader`. */
  readonly name?: string;
  /** Unique per process; default `defaultIdentity()`. */
  readonly identity?: string;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  /** How long a follower waits, from when it saw the holder's last renewal, before taking over. Integer, default 15. */
  readonly leaseDurationSeconds?: number;
  /** A leader that has not renewed for this long steps down. Below the lease duration; default 10 s. */
  readonly renewDeadlineMs?: number;
  /** Between attempts to acquire or renew; default 2 s. */
  readonly retryPeriodMs?: number;
  /** Hand the Lease over at once (holderIdentity emptied) when run()'s signal aborts. Default true. */
  readonly releaseOnCancel?: boolean;
  /**
   * Leadership begins; `signal` aborts when it ends. A returned promise is the leader's work: the
   * elector waits for it to settle before announcing the end or releasing the Lease, so two
   * replicas never work at once; if it settles while still leading, the elector steps down.
   */
  readonly onStartedLeading?: (signal: AbortSignal) => void | Promise<void>;
  /** Leadership ended (lost, failed to renew, or shut down), after the work has settled. */
  readonly onStoppedLeading?: () => void;
  /** Another replica is the leader now. */
  readonly onNewLeader?: (identity: string) => void;
  readonly clock?: ElectionClock;
  readonly random?: () => number;
}

/** The pod's name (downward API `POD_NAME`, else the hostname, which is the pod name in Kubernetes) plus a random suffix, so a restarted container is a new candidate. */
export function defaultIdentity(env: Readonly<Record<string, string | undefined>> = process.env): string {
  return `${env.POD_NAME || hostname()}_${randomBytes(4).toString("hex")}`;
}

/** Kubernetes MicroTime: RFC 3339 in UTC with exactly six fractional digits. */
export function microTime(epochMs: number): string {
  return new Date(epochMs).toISOString().replace(/Z$/, "000Z");
}

type LeadOutcome = "aborted" | "lost" | "work-ended";
type Attempt = "leader" | "follower";

export class LeaderElector {
  readonly identity: string;
  readonly namespace: string;
  readonly name: string;
  private readonly client: Pick<KubeClient, "get" | "create" | "update">;
  private readonly logger: Logger;
  private readonly gauge: Gauge;
  private readonly leaseDurationSeconds: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly releaseOnCancel: boolean;
  private readonly clock: ElectionClock;
  private readonly random: () => number;
  private readonly callbacks: Pick<
    LeaderElectorOptions,
    "onStartedLeading" | "onStoppedLeading" | "onNewLeader"
  >;

  private running = false;
  private leading = false;
  /** Monotonic start of the last attempt that wrote our record: the renew deadline counts from here. */
  private lastRenewAt = Number.NEGATIVE_INFINITY;
  /** The Lease as we last read or wrote it. */
  private cached: Lease | undefined;
  private observedRecord = "";
  private observedAt = Number.NEGATIVE_INFINITY;
  private observedDurationMs = 0;
  private observedHolder = "";
  private lastError = "";
  private readonly forbidden: ForbiddenLog;

  constructor(options: LeaderElectorOptions) {
    this.client = options.client;
    this.namespace = options.namespace;
    this.name = options.name ?? DEFAULT_LEADER_LEASE_NAME;
    this.identity = options.identity ?? defaultIdentity();
    this.leaseDurationSeconds = options.leaseDurationSeconds ?? DEFAULT_LEASE_DURATION_SECONDS;
    this.renewDeadlineMs = options.renewDeadlineMs ?? DEFAULT_RENEW_DEADLINE_MS;
    this.retryPeriodMs = options.retryPeriodMs ?? DEFAULT_RETRY_PERIOD_MS;
    this.releaseOnCancel = options.releaseOnCancel ?? true;
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.callbacks = options;
    if (!Number.isInteger(this.leaseDurationSeconds) || this.leaseDurationSeconds < 1) {
      throw new TypeError(
        `leaseDurationSeconds must be a whole number ≥ 1, not ${this.leaseDurationSeconds}`,
      );
    }
    if (!(this.renewDeadlineMs < this.leaseDurationSeconds * 1000)) {
      throw new TypeError(
        `renewDeadline (${this.renewDeadlineMs} ms) must be shorter than the lease duration (${this.leaseDurationSeconds} s), or two replicas could lead at once`,
      );
    }
    if (!(this.retryPeriodMs > 0 && this.renewDeadlineMs > this.retryPeriodMs * JITTER_FACTOR)) {
      throw new TypeError(
        `renewDeadline (${this.renewDeadlineMs} ms) must exceed ${JITTER_FACTOR} × retryPeriod (${this.retryPeriodMs} ms)`,
      );
    }
    if (this.identity === "") throw new TypeError("the leader-election identity must not be empty");
    this.logger = options.logger.child({ lease: `${this.namespace}/${this.name}`, identity: this.identity });
    this.forbidden = new ForbiddenLog(
      this.logger,
      "leader.forbidden",
      `leader election keeps retrying every ${this.retryPeriodMs} ms`,
    );
    this.gauge = options.metrics.gauge(
      "osm_cert_server_leader",
      "1 while this replica holds the leader Lease (and does the cluster-wide writes), else 0.",
    );
    this.gauge.set(0);
  }

  /** True while we hold the Lease and renewed it within the renew deadline. */
  get isLeader(): boolean {
    return this.leading && this.clock.monotonic() - this.lastRenewAt < this.renewDeadlineMs;
  }

  /** The holder we last saw ("" when none). */
  get leader(): string {
    return this.observedHolder;
  }

  /**
   * Competes for the Lease until `signal` aborts: acquire, lead (renewing), and after losing the
   * Lease compete again. Resolves once the leader's work has settled and, when asked, the Lease is released.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (this.running) throw new Error("LeaderElector.run() is already running");
    this.running = true;
    this.logger.info({ event: "leader.candidate" }, "competing for leadership");
    try {
      while (!signal.aborted) {
        if (!(await this.acquire(signal))) break;
        const outcome = await this.lead(signal);
        if (outcome === "aborted") break;
        await this.clock.sleep(this.jittered(), signal);
      }
    } finally {
      this.running = false;
    }
  }

  // ----- phases -----------------------------------------------------------------------------

  /** Tries every retryPeriod (jittered) until we hold the Lease; false when aborted first. */
  private async acquire(signal: AbortSignal): Promise<boolean> {
    while (!signal.aborted) {
      const started = this.clock.monotonic();
      try {
        if ((await this.tryAcquireOrRenew(signal)) === "leader") {
          this.lastRenewAt = started;
          return true;
        }
      } catch (error) {
        if (signal.aborted) return false;
        this.reportError(error, "acquire");
      }
      await this.clock.sleep(this.jittered(), signal);
    }
    return false;
  }

  private async lead(signal: AbortSignal): Promise<LeadOutcome> {
    this.leading = true;
    this.gauge.set(1);
    this.logger.info(
      { event: "leader.acquired", transitions: this.cached?.spec?.leaseTransitions ?? 0 },
      "acquired the leader Lease; leading",
    );
    const work = new AbortController();
    const workEnded = new AbortController();
    let workDone: Promise<void> | undefined;
    try {
      const result = this.callbacks.onStartedLeading?.(work.signal);
      if (result instanceof Promise) {
        workDone = result
          .then(
            () => undefined,
            (error: unknown) => {
              this.logger.error(
                { event: "leader.work_failed", error: errorText(error) },
                "the leader's work failed",
              );
            },
          )
          .finally(() => workEnded.abort());
      }
    } catch (error) {
      this.logger.error({ event: "leader.work_failed", error: errorText(error) }, "onStartedLeading threw");
    }

    let outcome: LeadOutcome = "aborted";
    try {
      outcome = await this.renewLoop(signal, workEnded.signal);
    } finally {
      this.leading = false;
      this.gauge.set(0);
      work.abort(new Error("leadership ended"));
      if (workDone !== undefined) await this.settle(workDone);
      try {
        this.callbacks.onStoppedLeading?.();
      } catch (error) {
        this.logger.error(
          { event: "leader.callback_failed", error: errorText(error) },
          "onStoppedLeading threw",
        );
      }
      if (outcome === "work-ended") {
        this.logger.warn({ event: "leader.work_ended" }, "the leader's work ended; handing the Lease over");
      }
      if ((outcome === "aborted" && this.releaseOnCancel) || outcome === "work-ended") await this.release();
      if (outcome === "aborted")
        this.logger.info({ event: "leader.stopped" }, "stopped leading: shutting down");
    }
    return outcome;
  }

  /** Renews every retryPeriod; returns why leadership ended. */
  private async renewLoop(signal: AbortSignal, workEnded: AbortSignal): Promise<LeadOutcome> {
    const stop = AbortSignal.any([signal, workEnded]);
    for (;;) {
      await this.clock.sleep(this.retryPeriodMs, stop);
      if (signal.aborted) return "aborted";
      if (workEnded.aborted) return "work-ended";
      const renewed = await this.renew(stop);
      if (signal.aborted) return "aborted";
      if (workEnded.aborted) return "work-ended";
      if (!renewed) return "lost";
    }
  }

  /** One renewal, retried until it succeeds, someone else holds the Lease, or the deadline passes. */
  private async renew(stop: AbortSignal): Promise<boolean> {
    for (;;) {
      const remaining = this.lastRenewAt + this.renewDeadlineMs - this.clock.monotonic();
      if (remaining <= 0) {
        this.logger.warn(
          { event: "leader.lost", reason: "renew_deadline", renewDeadlineMs: this.renewDeadlineMs },
          `could not renew the leader Lease within ${this.renewDeadlineMs} ms; stepping down`,
        );
        return false;
      }
      const started = this.clock.monotonic();
      try {
        const deadline = AbortSignal.any([stop, AbortSignal.timeout(Math.ceil(remaining))]);
        if ((await this.tryAcquireOrRenew(deadline)) === "leader") {
          this.lastRenewAt = started;
          return true;
        }
        this.logger.warn(
          { event: "leader.lost", reason: "taken", holder: this.observedHolder },
          `the leader Lease is held by ${this.observedHolder}; stepping down`,
        );
        return false;
      } catch (error) {
        if (stop.aborted) return false;
        this.reportError(error, "renew");
      }
      const left = this.lastRenewAt + this.renewDeadlineMs - this.clock.monotonic();
      await this.clock.sleep(Math.max(0, Math.min(this.retryPeriodMs, left)), stop);
      if (stop.aborted) return false;
    }
  }

  /** Empties holderIdentity so a follower takes over at its next retry instead of after expiry. */
  private async release(): Promise<void> {
    let lease = this.cached;
    const signal = AbortSignal.timeout(this.renewDeadlineMs);
    try {
      for (let round = 0; round < ROUNDS_PER_ATTEMPT && lease !== undefined; round++) {
        if (lease.spec?.holderIdentity !== this.identity) return;
        const now = microTime(this.clock.now());
        try {
          const released = await this.client.update(
            LEASES,
            {
              ...lease,
              spec: {
                ...lease.spec,
                holderIdentity: "",
                leaseDurationSeconds: 1,
                acquireTime: now,
                renewTime: now,
              },
            },
            { namespace: this.namespace, signal, maxAttempts: 1 },
          );
          this.succeeded("update");
          this.observe(released);
          this.logger.info({ event: "leader.released" }, "released the leader Lease");
          return;
        } catch (error) {
          if (!isConflict(error)) throw error;
          lease = await this.client.get(LEASES, this.name, {
            namespace: this.namespace,
            signal,
            maxAttempts: 1,
          });
          this.observe(lease);
        }
      }
    } catch (error) {
      if (isNotFound(error)) return;
      this.logger.warn(
        { event: "leader.release_failed", error: errorText(error) },
        "could not release the leader Lease; followers take over when it expires",
      );
    } finally {
      this.cached = undefined;
    }
  }

  // ----- one attempt ------------------------------------------------------------------------

  /**
   * Reads the Lease (a leader trusts its cached copy and lets a Conflict tell it otherwise), and
   * writes our record when it is ours, free, or expired. Throws when the API call fails.
   */
  private async tryAcquireOrRenew(signal: AbortSignal): Promise<Attempt> {
    // Our own loop retries at retryPeriod within the renew deadline; the client must not stretch one attempt.
    const call = { namespace: this.namespace, signal, maxAttempts: 1 };
    let lease = this.leading ? this.cached : undefined;
    for (let round = 0; round < ROUNDS_PER_ATTEMPT; round++) {
      if (lease === undefined) {
        try {
          lease = await this.client.get(LEASES, this.name, call);
          this.succeeded("get");
        } catch (error) {
          if (!isNotFound(error)) throw error;
          this.succeeded("get");
          try {
            const created = await this.client.create(
              LEASES,
              { metadata: { name: this.name, namespace: this.namespace }, spec: this.recordAfter(undefined) },
              call,
            );
            this.succeeded("create");
            this.cached = created;
            this.observe(created);
            return "leader";
          } catch (createError) {
            if (!isAlreadyExists(createError)) throw createError;
            // Another candidate created it first: read the winner's record.
            continue;
          }
        }
      }
      this.observe(lease);
      const holder = lease.spec?.holderIdentity ?? "";
      if (holder !== "" && holder !== this.identity && !this.observedExpired()) {
        this.cached = lease;
        return "follower";
      }
      try {
        const updated = await this.client.update(
          LEASES,
          { ...lease, spec: { ...lease.spec, ...this.recordAfter(lease) } },
          call,
        );
        this.succeeded("update");
        this.cached = updated;
        this.observe(updated);
        return "leader";
      } catch (error) {
        // Someone wrote since we read (or deleted it): decide again on a fresh read.
        if (!isConflict(error) && !isNotFound(error)) throw error;
        this.logger.debug(
          { event: "leader.conflict", reason: (error as Error).message },
          "re-reading the Lease",
        );
        lease = undefined;
      }
    }
    throw new Error(
      `the Lease ${this.namespace}/${this.name} kept changing during ${ROUNDS_PER_ATTEMPT} reads`,
    );
  }

  private recordAfter(previous: Lease | undefined): NonNullable<Lease["spec"]> {
    const now = microTime(this.clock.now());
    const spec = previous?.spec;
    const ours = spec?.holderIdentity === this.identity;
    const transitions = spec?.leaseTransitions ?? 0;
    return {
      holderIdentity: this.identity,
      leaseDurationSeconds: this.leaseDurationSeconds,
      acquireTime: ours && spec?.acquireTime ? spec.acquireTime : now,
      renewTime: now,
      leaseTransitions: previous === undefined || ours ? transitions : transitions + 1,
    };
  }

  /** Notes when the record last changed, by our clock: expiry counts from that moment. */
  private observe(lease: Lease): void {
    const spec = lease.spec ?? {};
    const record = JSON.stringify([
      spec.holderIdentity ?? "",
      spec.leaseDurationSeconds ?? null,
      spec.acquireTime ?? null,
      spec.renewTime ?? null,
      spec.leaseTransitions ?? null,
    ]);
    if (record !== this.observedRecord) {
      this.observedRecord = record;
      this.observedAt = this.clock.monotonic();
    }
    const seconds = spec.leaseDurationSeconds;
    this.observedDurationMs =
      (typeof seconds === "number" && seconds > 0 ? seconds : this.leaseDurationSeconds) * 1000;
    const holder = spec.holderIdentity ?? "";
    if (holder !== this.observedHolder) {
      this.observedHolder = holder;
      if (holder !== "" && holder !== this.identity) {
        this.logger.info({ event: "leader.observed", holder }, `${holder} is the leader`);
        try {
          this.callbacks.onNewLeader?.(holder);
        } catch (error) {
          this.logger.error(
            { event: "leader.callback_failed", error: errorText(error) },
            "onNewLeader threw",
          );
        }
      }
    }
  }

  private observedExpired(): boolean {
    return this.clock.monotonic() >= this.observedAt + this.observedDurationMs;
  }

  // ----- helpers ----------------------------------------------------------------------------

  private jittered(): number {
    return this.retryPeriodMs * (1 + JITTER_FACTOR * this.random());
  }

  /** Waits for the leader's work, but not forever: a hung task must not keep the Lease from being released. */
  private async settle(work: Promise<void>): Promise<void> {
    const timer = new AbortController();
    const timedOut = this.clock.sleep(this.renewDeadlineMs, timer.signal).then(() => "timeout" as const);
    const result = await Promise.race([work.then(() => "done" as const), timedOut]);
    timer.abort();
    if (result === "timeout") {
      this.logger.warn(
        { event: "leader.work_hung" },
        `the leader's work did not stop within ${this.renewDeadlineMs} ms of losing leadership`,
      );
    }
  }

  private succeeded(verb: Verb): void {
    this.forbidden.succeeded(verb, LEASES.plural);
    this.lastError = "";
  }

  /** One line per kind of failure, not one per retry; RBAC denials once per verb until granted. */
  private reportError(error: unknown, phase: "acquire" | "renew"): void {
    if (isForbidden(error)) {
      this.forbidden.report(error);
      return;
    }
    const text = errorText(error);
    if (text === this.lastError) {
      this.logger.debug({ event: "leader.error", phase, error: text }, "leader election attempt failed");
      return;
    }
    this.lastError = text;
    this.logger.warn(
      { event: "leader.error", phase, error: text },
      phase === "renew"
        ? "could not renew the leader Lease; retrying"
        : "could not acquire the leader Lease; retrying",
    );
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
