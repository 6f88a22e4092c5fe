// A bound on CertificateRequests in flight, so a pod storm becomes a queue in this process instead
// of thousands of objects and watches on the API server. Excess callers wait in a bounded queue
// for a bounded time; beyond either bound they get RESOURCE_EXHAUSTED with a retry hint at once.

import { ProviderError } from "../provider.js";

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

/** "A few seconds": the retry hint (grpc-retry-pushback-ms) a refused CSR carries to its agent. */
const RETRY_AFTER_MS = 3_000;

const leave = (queue: Waiter[], waiter: Waiter): void => {
  const index = queue.indexOf(waiter);
  if (index >= 0) queue.splice(index, 1);
};

export class InFlightLimiter {
  private active = 0;
  private readonly queue: Waiter[] = [];

  constructor(private readonly limits: InFlightLimits) {}

  get inFlight(): number {
    return this.active;
  }

  get queued(): number {
    return this.queue.length;
  }

  /** Resolves with the release function once a slot is ours; an aborted caller leaves the queue. */
  async acquire(signal?: AbortSignal): Promise<() => void> {
    const { maxInFlight, maxQueued, maxWaitMs } = this.limits;
    if (this.active < maxInFlight) {
      this.active++;
      return this.releaser();
    }
    if (this.queue.length >= maxQueued) {
      throw new ProviderError(
        "exhausted",
        `${this.active} CertificateRequests in flight and ${this.queue.length} waiting (the limits); retry in a few seconds`,
        RETRY_AFTER_MS,
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
          reject(
            new ProviderError(
              "exhausted",
              `waited ${Math.round(maxWaitMs / 1000)}s behind ${this.active} CertificateRequests in flight; retry in a few seconds`,
              RETRY_AFTER_MS,
            ),
          );
        }, maxWaitMs),
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.queue.push(waiter);
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.queue.shift();
      // The slot passes straight to the next waiter: `active` stays the same.
      if (next) next.grant();
      else this.active--;
    };
  }
}
