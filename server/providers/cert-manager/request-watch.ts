// One watch per replica on the CertificateRequests it owns (label-selected: managed-by and this
// replica's instance label), instead of one watch per CSR: a pod storm then costs the API server a
// create and a delete per CSR, not a watch connection each. The watch is an informer in miniature —
// list, then watch from the list's resourceVersion (bookmarks keep that version fresh), re-watch
// from the last version when a stream ends or breaks, re-list when the version is gone (410) — and
// keeps the latest state of every request it has seen, so a request whose Ready event arrived
// before its waiter registered (the create's answer can trail the watch event) is not lost.
// Kubernetes semantics followed: kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes.

import { backoffDelay } from "../../../common/lifecycle.js";
import type { Logger } from "../../../common/logger.js";
import { isGone, type KubeClient } from "../../kubernetes/client.js";
import { CERTIFICATE_REQUESTS, type CertificateRequest } from "./resources.js";

/** A new state of a followed request, or null once it is gone. */
export type RequestListener = (request: CertificateRequest | null) => void;

export interface RequestWatchOptions {
  readonly client: Pick<KubeClient, "list" | "watch">;
  readonly namespace: string;
  /** Selects this replica's requests, and only them. */
  readonly labelSelector: string;
  readonly logger: Logger;
  /** Server-side end of each watch stream; default: the client's (5–10 min, spread). */
  readonly watchTimeoutSeconds?: number;
}

interface Waiter {
  readonly listener: RequestListener;
  /** The list epoch at registration: a list started later must contain the request unless it is gone. */
  readonly epoch: number;
}

export class CertificateRequestWatch {
  private readonly latest = new Map<string, CertificateRequest>();
  private readonly waiters = new Map<string, Waiter>();
  private readonly stop = new AbortController();
  private resourceVersion: string | undefined;
  private listEpoch = 0;
  private running: Promise<void> = Promise.resolve();
  /** Why the watch is not connected right now (for timeout messages); null while it is. */
  private trouble: string | null = null;

  private constructor(private readonly options: RequestWatchOptions) {}

  /** Lists once (errors propagate: RBAC or a missing CRD stop start-up), then watches in the background. */
  static async open(options: RequestWatchOptions): Promise<CertificateRequestWatch> {
    const watch = new CertificateRequestWatch(options);
    await watch.relist();
    watch.running = watch.run();
    return watch;
  }

  /**
   * Follows the request named `name`; the listener hears its latest known state at once (if the
   * watch already saw it) and every change after, then null if it is deleted. Returns the function
   * that stops following.
   */
  follow(name: string, listener: RequestListener): () => void {
    const waiter: Waiter = { listener, epoch: this.listEpoch };
    this.waiters.set(name, waiter);
    const known = this.latest.get(name);
    if (known !== undefined) listener(known);
    return () => {
      if (this.waiters.get(name) === waiter) this.waiters.delete(name);
      // Nobody waits for it any more; a later event (until its DELETED) only re-adds it.
      this.latest.delete(name);
    };
  }

  /** Null while the watch is connected; otherwise why it is not. */
  get problem(): string | null {
    return this.trouble;
  }

  /** Requests whose state is kept (for tests and metrics): bounded by the requests in flight. */
  get size(): number {
    return this.latest.size;
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
  }

  private async run(): Promise<void> {
    const { client, namespace, labelSelector, logger, watchTimeoutSeconds } = this.options;
    const signal = this.stop.signal;
    let failures = 0;
    while (!signal.aborted) {
      const started = Date.now();
      let events = 0;
      try {
        if (this.resourceVersion === undefined) await this.relist();
        for await (const event of client.watch(CERTIFICATE_REQUESTS, {
          namespace,
          labelSelector,
          ...(this.resourceVersion === undefined ? {} : { resourceVersion: this.resourceVersion }),
          ...(watchTimeoutSeconds === undefined ? {} : { timeoutSeconds: watchTimeoutSeconds }),
          signal,
        })) {
          events++;
          failures = 0;
          this.trouble = null;
          this.resourceVersion = event.object.metadata?.resourceVersion ?? this.resourceVersion;
          if (event.type === "BOOKMARK") continue;
          const name = event.object.metadata?.name;
          if (typeof name !== "string") continue;
          if (event.type === "DELETED") {
            this.latest.delete(name);
            this.waiters.get(name)?.listener(null);
          } else {
            this.latest.set(name, event.object);
            this.waiters.get(name)?.listener(event.object);
          }
        }
        // The server ended the stream (timeoutSeconds): watch on from the last version. A stream
        // that ends at once, with nothing in it, is treated as a failure so it cannot spin.
        if (events > 0 || Date.now() - started > 1_000) continue;
        this.trouble = "the watch stream ended at once";
      } catch (error) {
        if (signal.aborted) return;
        if (isGone(error)) {
          // Our version is older than the server keeps: list again (the current state) and watch from there.
          logger.info(
            { event: "cert_manager.watch_relist", error: (error as Error).message },
            "CertificateRequest watch: the resourceVersion expired; listing again",
          );
          this.resourceVersion = undefined;
          continue;
        }
        this.trouble = (error as Error).message;
      }
      const delay = backoffDelay(failures++, 200, 5_000);
      logger.warn(
        { event: "cert_manager.watch_failed", error: this.trouble, retryInMs: Math.round(delay) },
        "CertificateRequest watch failed; retrying from the last resourceVersion",
      );
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        signal.addEventListener(
          "abort",
          () => {
            clearTimeout(timer);
            resolve();
          },
          { once: true },
        );
      });
    }
  }

  /** The current state replaces what was kept; waiters hear their request's state, or that it is gone. */
  private async relist(): Promise<void> {
    const { client, namespace, labelSelector } = this.options;
    const epoch = ++this.listEpoch;
    const list = await client.list(CERTIFICATE_REQUESTS, {
      namespace,
      labelSelector,
      signal: this.stop.signal,
    });
    this.latest.clear();
    for (const item of list.items) {
      const name = item.metadata?.name;
      if (typeof name === "string") this.latest.set(name, item);
    }
    this.resourceVersion = list.metadata.resourceVersion;
    for (const [name, waiter] of this.waiters) {
      const found = this.latest.get(name);
      if (found !== undefined) waiter.listener(found);
      // Created before this list began (its create had returned) and not in it: deleted meanwhile.
      else if (waiter.epoch < epoch) waiter.listener(null);
    }
  }
}
