// Keeps `webhooks[*].clientConfig.caBundle` of our MutatingWebhookConfiguration equal to the mesh
// roots, as OSM's controller does for its own webhooks, so the chart never pastes a CA and an edit
// by hand is repaired. RBAC grants get and patch on that one object (CONTRACT.md), no watch, so it
// re-reads on a period and whenever the bundle changes. Every replica may do this at once: they
// write the same value, and the resourceVersion in each patch turns a race into a Conflict that is
// re-read and found already done.

import { setTimeout as sleep } from "node:timers/promises";
import { backoffDelay } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import type { MetricsRegistry } from "../common/metrics.js";
import {
  isConflict,
  isForbidden,
  isNotFound,
  KubeApiError,
  type KubeClient,
  type KubeObject,
  type ResourceType,
} from "../server/kubernetes/client.js";
import { ForbiddenLog } from "../server/kubernetes/forbidden-log.js";
import type { CertificateProvider } from "../server/providers/provider.js";

export interface MutatingWebhookConfiguration extends KubeObject {
  webhooks?: { name?: string; clientConfig?: { caBundle?: string } & Record<string, unknown> }[];
}

export const MUTATING_WEBHOOK_CONFIGURATIONS: ResourceType<MutatingWebhookConfiguration> = {
  group: "admissionregistration.k8s.io",
  version: "v1",
  plural: "mutatingwebhookconfigurations",
  kind: "MutatingWebhookConfiguration",
  namespaced: false,
};

export interface CaBundleKeeperOptions {
  readonly client: Pick<KubeClient, "get" | "patch">;
  readonly name: string;
  readonly provider: Pick<CertificateProvider, "trustBundle" | "onTrustBundleChange">;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  /** How often the object is re-read to repair edits; default 30s. */
  readonly resyncMs?: number;
  readonly retryBaseMs?: number;
  readonly retryCapMs?: number;
}

type SyncResult = "in_sync" | "patched" | "conflict" | "not_found" | "forbidden" | "error";

export class CaBundleKeeper {
  private readonly forbidden: ForbiddenLog;
  private readonly syncs;
  private wake: (() => void) | null = null;
  private lastResult: SyncResult | null = null;

  constructor(private readonly options: CaBundleKeeperOptions) {
    this.forbidden = new ForbiddenLog(
      options.logger,
      "ca_bundle.forbidden",
      "the API server keeps calling the webhook with the old caBundle until this is granted; retrying",
    );
    this.syncs = options.metrics
      .counter(
        "osm_cert_webhook_ca_bundle_syncs_total",
        "caBundle reconciliations by result: in_sync, patched, conflict, not_found, forbidden, error.",
      )
      .zero({ result: "in_sync" })
      .zero({ result: "patched" })
      .zero({ result: "conflict" })
      .zero({ result: "not_found" })
      .zero({ result: "forbidden" })
      .zero({ result: "error" });
  }

  async run(signal: AbortSignal): Promise<void> {
    const unsubscribe = this.options.provider.onTrustBundleChange(() => this.wake?.());
    try {
      for (let failures = 0; !signal.aborted; ) {
        const result = await this.syncOnce(signal);
        failures = result === "in_sync" || result === "patched" ? 0 : failures + 1;
        // A Conflict means someone wrote meanwhile: look again at once.
        if (result === "conflict" && failures < 5) continue;
        const delay =
          failures === 0
            ? (this.options.resyncMs ?? 30_000)
            : backoffDelay(failures, this.options.retryBaseMs ?? 500, this.options.retryCapMs ?? 30_000);
        await this.sleepOrWake(delay, signal);
      }
    } finally {
      unsubscribe();
    }
  }

  /** One read and, if needed, one patch. */
  async syncOnce(signal?: AbortSignal): Promise<SyncResult> {
    const { client, name, logger } = this.options;
    const caBundle = Buffer.from(this.options.provider.trustBundle().roots.join("")).toString("base64");
    let result: SyncResult;
    let stale = 0;
    try {
      const current = await client.get(MUTATING_WEBHOOK_CONFIGURATIONS, name, signal ? { signal } : {});
      this.forbidden.succeeded("get", MUTATING_WEBHOOK_CONFIGURATIONS.plural);
      const webhooks = current.webhooks ?? [];
      stale = webhooks.filter((w) => w.clientConfig?.caBundle !== caBundle).length;
      if (stale === 0) {
        result = "in_sync";
      } else {
        // A merge patch replaces the list whole, so it carries every webhook as read; the
        // resourceVersion makes it apply only to exactly what we read.
        await client.patch(
          MUTATING_WEBHOOK_CONFIGURATIONS,
          name,
          {
            metadata: { resourceVersion: current.metadata?.resourceVersion },
            webhooks: webhooks.map((w) => ({ ...w, clientConfig: { ...w.clientConfig, caBundle } })),
          },
          signal ? { signal } : {},
        );
        this.forbidden.succeeded("patch", MUTATING_WEBHOOK_CONFIGURATIONS.plural);
        result = "patched";
      }
    } catch (error) {
      if (signal?.aborted) throw error;
      if (isConflict(error)) result = "conflict";
      else if (isNotFound(error)) result = "not_found";
      else if (isForbidden(error)) {
        this.forbidden.report(error);
        result = "forbidden";
      } else {
        result = "error";
        logger.warn(
          { event: "ca_bundle.error", name },
          `keeping the caBundle of MutatingWebhookConfiguration ${name}: ${error instanceof KubeApiError || error instanceof Error ? error.message : String(error)}; retrying`,
        );
      }
    }
    this.syncs.inc({ result });
    this.report(result, stale);
    return result;
  }

  private report(result: SyncResult, stale: number): void {
    const { logger, name } = this.options;
    if (result === "patched")
      logger.info(
        { event: "ca_bundle.patched", name, webhooks: stale },
        `set the caBundle of ${stale} webhook(s) in MutatingWebhookConfiguration ${name} to the mesh roots`,
      );
    // Said once per change of state, not on every resync.
    else if (result === "not_found" && this.lastResult !== "not_found")
      logger.warn(
        { event: "ca_bundle.not_found", name },
        `MutatingWebhookConfiguration ${name} does not exist (yet); the API server cannot call this webhook until it does`,
      );
    this.lastResult = result;
  }

  private async sleepOrWake(ms: number, signal: AbortSignal): Promise<void> {
    const woken = new AbortController();
    this.wake = () => woken.abort();
    try {
      await sleep(ms, undefined, { signal: AbortSignal.any([signal, woken.signal]) });
    } catch {
      // Woken by a bundle change, or stopping: the loop decides.
    } finally {
      this.wake = null;
    }
  }
}
