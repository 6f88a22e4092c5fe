// A bound on CertificateRequests in flight, so a pod storm becomes a queue in this process instead
// of thousands of objects on the API server. Excess callers wait in a bounded queue for a bounded
// time; beyond either bound they get RESOURCE_EXHAUSTED with a retry hint: when the queue ahead of
// them should have drained, from how long a slot has recently been held.

import { ProviderError } from "../provider.js";

/** RESOURCE_EXHAUSTED with when to come back (for grpc-retry-pushback-ms; the message says it too). */
export class ExhaustedError extends ProviderError {
  declare readonly retryAfterMs: number;
  constructor(message: string, retryAfterMs: number) {
    super("exhausted", message, retryAfterMs);
  }
}

const MIN_RETRY_MS = 1_000;
const MAX_RETRY_MS = 30_000;
/** Assumed slot time before any request finished (a CertificateRequest's usual round trip). */
const INITIAL_HOLD_MS = 200;

export interface InFlightLimits {
  readonly maxInFlight: number;
  readonly maxQueued: number;
  /** Longest wait in the queue. */
  readonly maxWaitMs: number;
}

interface Waiter {
  readonly grant: () => void;
  readonly timer: NodeJS.Timeout;
}

const leave = (queue: Waiter[], waiter: Waiter): void => {
  const index = queue.indexOf(waiter);
  if (index >= 0) queue.splice(index, 1);
};

export class InFlightLimiter {
  private active = 0;
  private readonly queue: Waiter[] = [];
  /** Moving average of how long a slot is held. */
  private holdMs = INITIAL_HOLD_MS;

  constructor(private readonly limits: InFlightLimits) {}

  get inFlight(): number {
    return this.active;
  }

  get queued(): number {
    return this.queue.length;
  }

  /**
   * Resolves with the release function once a slot is ours; an aborted caller leaves the queue.
   * `urgent` (the server's own serving certificate: a storm must not let it expire) goes to the
   * front of the queue and is never refused for the queue's size.
   */
  async acquire(signal?: AbortSignal, urgent = false): Promise<() => void> {
    const { maxInFlight, maxQueued, maxWaitMs } = this.limits;
    if (this.active < maxInFlight) {
      this.active++;
      return this.releaser();
    }
    if (!urgent && this.queue.length >= maxQueued) {
      const retryMs = this.retryAfterMs();
      throw new ExhaustedError(
        `${this.active} CertificateRequests in flight and ${this.queue.length} waiting (the limits); retry in ${seconds(retryMs)}`,
        retryMs,
      );
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        clearTimeout(waiter.timer);
        leave(this.queue, waiter);
        reject(new ProviderError("deadline", "the caller gave up while waiting for an in-flight slot"));
      };
      const waiter: Waiter = {
        grant: () => {
          clearTimeout(waiter.timer);
          signal?.removeEventListener("abort", onAbort);
          resolve(this.releaser());
        },
        timer: setTimeout(() => {
          signal?.removeEventListener("abort", onAbort);
          leave(this.queue, waiter);
          const retryMs = this.retryAfterMs();
          reject(
            new ExhaustedError(
              `waited ${seconds(maxWaitMs)} behind ${this.active} CertificateRequests in flight and ${this.queue.length} more waiting; retry in ${seconds(retryMs)}`,
              retryMs,
            ),
          );
        }, maxWaitMs),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      if (urgent) this.queue.unshift(waiter);
      else this.queue.push(waiter);
    });
  }

  /** When the queue as it is now should have drained, within [1 s, 30 s]. */
  retryAfterMs(): number {
    const drainMs = ((this.queue.length + 1) * this.holdMs) / this.limits.maxInFlight;
    return Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, Math.ceil(drainMs / 100) * 100));
  }

  private releaser(): () => void {
    let released = false;
    const since = Date.now();
    return () => {
      if (released) return;
      released = true;
      this.holdMs += (Date.now() - since - this.holdMs) / 8;
      const next = this.queue.shift();
      // The slot passes straight to the next waiter: `active` stays the same.
      if (next) next.grant();
      else this.active--;
    };
  }
}

const seconds = (ms: number): string => `${Math.round(ms / 100) / 10}s`;
