// Trust-bundle distribution (issue 3 item 5): while this replica leads, every namespace matched by
// the selector holds a ConfigMap (default `osm-ca-root-cert`) whose `ca.crt` is the mesh's root
// bundle, so a pod can trust the signing server before it has a certificate. A small controller in
// the shape of client-go's: two informers (list, then watch from the list's resourceVersion; on 410
// Gone or a broken watch, list again so nothing that happened meanwhile is missed) feed a work queue
// of namespaces, and a few workers make each one right. Writes carry the resourceVersion they were
// computed from; a Conflict means someone wrote since, so we re-read and decide again. Namespaces
// outside the selector are never touched, not even to clean up.

import { backoffDelay } from "../../common/lifecycle.js";
import type { Logger } from "../../common/logger.js";
import type { Counter, Gauge, MetricsRegistry } from "../../common/metrics.js";
import type { CertificateProvider, TrustBundle } from "../providers/provider.js";
import {
  CONFIG_MAPS,
  type ConfigMap,
  isAlreadyExists,
  isConflict,
  isForbidden,
  isGone,
  isNotFound,
  KubeApiError,
  type KubeClient,
  KubeConnectionError,
  type KubeObject,
  NAMESPACES,
  type Namespace,
  type ResourceType,
} from "./client.js";
import { ForbiddenLog } from "./forbidden-log.js";

export const DEFAULT_TRUST_BUNDLE_CONFIGMAP_NAME = "osm-ca-root-cert";
/** OSM labels each meshed namespace `openservicemesh.io/monitored-by=<mesh name>`. */
export const DEFAULT_NAMESPACE_SELECTOR = "openservicemesh.io/monitored-by";
export const TRUST_BUNDLE_KEY = "ca.crt";
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY_VALUE = "osm-cert";

/** Re-reads after a Conflict (or a create that found the ConfigMap) before the attempt is retried later. */
const ROUNDS_PER_RECONCILE = 4;

export interface TrustBundleDistributorOptions {
  readonly client: Pick<KubeClient, "get" | "create" | "update" | "list" | "watch">;
  readonly provider: Pick<CertificateProvider, "trustBundle" | "onTrustBundleChange">;
  /** A Kubernetes label selector for namespaces; default `openservicemesh.io/monitored-by`; "" selects all. */
  readonly namespaceSelector?: string;
  readonly configMapName?: string;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  /** Namespaces written concurrently; default 4. */
  readonly workers?: number;
  /** Backoff for a namespace that failed, and for re-listing after a failed list or watch. */
  readonly retryBaseMs?: number;
  readonly retryCapMs?: number;
  /** Passed to watches; default the client's (5–10 min). */
  readonly watchTimeoutSeconds?: number;
}

type WriteResult = "created" | "updated" | "conflict" | "forbidden" | "error";

export class TrustBundleDistributor {
  readonly configMapName: string;
  readonly namespaceSelector: string;
  private readonly client: TrustBundleDistributorOptions["client"];
  private readonly provider: TrustBundleDistributorOptions["provider"];
  private readonly logger: Logger;
  private readonly workers: number;
  private readonly retryBaseMs: number;
  private readonly retryCapMs: number;
  private readonly watchTimeoutSeconds: number | undefined;
  private readonly configMapsGauge: Gauge;
  private readonly writes: Counter;
  private readonly forbidden: ForbiddenLog;

  private running = false;
  // Per run; reset when leadership begins, since a follower's view may be arbitrarily stale.
  private desired = "";
  private readonly distributed = new Set<string>();
  private readonly selected = new Set<string>();
  private readonly cache = new Map<string, ConfigMap>();
  /** Selected namespaces whose ConfigMap is known to hold the current bundle. */
  private readonly current = new Set<string>();
  private readonly failures = new Map<string, number>();
  private queue = new WorkQueue();

  constructor(options: TrustBundleDistributorOptions) {
    this.client = options.client;
    this.provider = options.provider;
    this.configMapName = options.configMapName ?? DEFAULT_TRUST_BUNDLE_CONFIGMAP_NAME;
    this.namespaceSelector = options.namespaceSelector ?? DEFAULT_NAMESPACE_SELECTOR;
    this.logger = options.logger.child({ component: "trust-bundle-distributor" });
    this.workers = Math.max(1, options.workers ?? 4);
    this.retryBaseMs = options.retryBaseMs ?? 500;
    this.retryCapMs = options.retryCapMs ?? 60_000;
    this.watchTimeoutSeconds = options.watchTimeoutSeconds;
    this.forbidden = new ForbiddenLog(
      this.logger,
      "trust_bundle.forbidden",
      "trust-bundle distribution keeps retrying with backoff",
    );
    this.configMapsGauge = options.metrics.gauge(
      "osm_cert_server_trust_bundle_configmaps",
      "Selected namespaces whose trust-bundle ConfigMap holds the current bundle (0 on replicas that do not lead).",
    );
    this.configMapsGauge.set(0);
    this.writes = options.metrics
      .counter(
        "osm_cert_server_trust_bundle_writes_total",
        "Trust-bundle ConfigMap writes by result: created, updated, conflict, forbidden, error.",
      )
      .zero({ result: "created" })
      .zero({ result: "updated" })
      .zero({ result: "conflict" })
      .zero({ result: "forbidden" })
      .zero({ result: "error" });
  }

  /**
   * Keeps the ConfigMaps right until `signal` aborts (the end of leadership). Never rejects for API
   * failures: those are logged and retried with backoff.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (this.running) throw new Error("TrustBundleDistributor.run() is already running");
    this.running = true;
    this.reset();
    const queue = this.queue;
    const stop = () => queue.shutdown();
    signal.addEventListener("abort", stop, { once: true });
    this.setBundle(this.provider.trustBundle(), false);
    const unsubscribe = this.provider.onTrustBundleChange((bundle) => this.setBundle(bundle, true));
    this.logger.info(
      {
        event: "trust_bundle.distribution_started",
        configMap: this.configMapName,
        selector: this.namespaceSelector,
      },
      "distributing the trust bundle",
    );
    let namespacesListed = false;
    let configMapsListed = false;
    let markSynced: () => void = () => undefined;
    const synced = new Promise<void>((resolve) => {
      markSynced = resolve;
    });
    const listed = () => {
      if (namespacesListed && configMapsListed) markSynced();
    };
    try {
      await Promise.all([
        this.inform(signal, {
          type: NAMESPACES,
          labelSelector: this.namespaceSelector,
          replace: (items) => {
            this.replaceNamespaces(items);
            namespacesListed = true;
            listed();
          },
          apply: (type, namespace) => this.applyNamespace(type, namespace),
        }),
        this.inform(signal, {
          type: CONFIG_MAPS,
          labelSelector: `${MANAGED_BY_LABEL}=${MANAGED_BY_VALUE}`,
          fieldSelector: `metadata.name=${this.configMapName}`,
          replace: (items) => {
            this.replaceConfigMaps(items);
            configMapsListed = true;
            listed();
          },
          apply: (type, configMap) => this.applyConfigMap(type, configMap),
        }),
        // Workers start once both caches are filled, so the first pass writes only what is wrong.
        ...Array.from({ length: this.workers }, () => this.work(queue, synced, signal)),
      ]);
    } finally {
      signal.removeEventListener("abort", stop);
      queue.shutdown();
      unsubscribe();
      this.configMapsGauge.set(0);
      this.running = false;
      this.logger.info(
        { event: "trust_bundle.distribution_stopped" },
        "stopped distributing the trust bundle",
      );
    }
  }

  // ----- desired state ----------------------------------------------------------------------

  private reset(): void {
    this.selected.clear();
    this.cache.clear();
    this.current.clear();
    this.failures.clear();
    this.queue = new WorkQueue();
  }

  private setBundle(bundle: TrustBundle, changed: boolean): void {
    const text = bundle.roots.map((pem) => (pem.endsWith("\n") ? pem : `${pem}\n`)).join("");
    if (text === this.desired) return;
    if (this.desired !== "") this.distributed.add(this.desired);
    this.desired = text;
    if (!changed) return;
    this.logger.info(
      { event: "trust_bundle.changed", version: bundle.version, namespaces: this.selected.size },
      "trust bundle changed; updating every ConfigMap",
    );
    for (const namespace of [...this.current]) this.track(namespace);
    for (const namespace of this.selected) this.queue.add(namespace);
  }

  private isCurrent(configMap: ConfigMap): boolean {
    const data = configMap.data ?? {};
    const keys = Object.keys(data);
    return (
      configMap.metadata?.labels?.[MANAGED_BY_LABEL] === MANAGED_BY_VALUE &&
      keys.length === 1 &&
      data[TRUST_BUNDLE_KEY] === this.desired &&
      Object.keys(configMap.binaryData ?? {}).length === 0
    );
  }

  private fresh(namespace: string): ConfigMap {
    return {
      metadata: {
        name: this.configMapName,
        namespace,
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE },
      },
      data: { [TRUST_BUNDLE_KEY]: this.desired },
    };
  }

  /** The same object (resourceVersion included, so the write is conditional) with our data restored. */
  private repaired(configMap: ConfigMap): ConfigMap {
    const { binaryData: _dropped, ...rest } = configMap;
    return {
      ...rest,
      metadata: {
        ...configMap.metadata,
        labels: { ...configMap.metadata?.labels, [MANAGED_BY_LABEL]: MANAGED_BY_VALUE },
      },
      data: { [TRUST_BUNDLE_KEY]: this.desired },
    };
  }

  private track(namespace: string): void {
    const configMap = this.cache.get(namespace);
    if (this.selected.has(namespace) && configMap !== undefined && this.isCurrent(configMap)) {
      this.current.add(namespace);
    } else {
      this.current.delete(namespace);
    }
    this.configMapsGauge.set(this.current.size);
  }

  private remember(namespace: string, configMap: ConfigMap | undefined): void {
    if (configMap === undefined) this.cache.delete(namespace);
    else this.cache.set(namespace, configMap);
    this.track(namespace);
  }

  // ----- informers --------------------------------------------------------------------------

  private replaceNamespaces(items: readonly Namespace[]): void {
    const next = new Set<string>();
    for (const namespace of items) {
      const name = namespace.metadata?.name;
      if (name && isActive(namespace)) next.add(name);
    }
    for (const name of [...this.selected]) {
      if (!next.has(name)) {
        this.selected.delete(name);
        this.track(name);
      }
    }
    for (const name of next) {
      this.selected.add(name);
      this.track(name);
      this.queue.add(name);
    }
  }

  private applyNamespace(type: "ADDED" | "MODIFIED" | "DELETED", namespace: Namespace): void {
    const name = namespace.metadata?.name;
    if (!name) return;
    if (type === "DELETED" || !isActive(namespace)) {
      this.selected.delete(name);
      this.track(name);
      return;
    }
    if (!this.selected.has(name)) {
      this.logger.debug({ event: "trust_bundle.namespace_selected", namespace: name }, "namespace selected");
    }
    this.selected.add(name);
    this.track(name);
    this.queue.add(name);
  }

  private replaceConfigMaps(items: readonly ConfigMap[]): void {
    const stale = new Set(this.cache.keys());
    this.cache.clear();
    for (const configMap of items) {
      const namespace = configMap.metadata?.namespace;
      if (namespace) this.cache.set(namespace, configMap);
    }
    for (const namespace of new Set([...stale, ...this.cache.keys()])) this.track(namespace);
    // What changed while we were not watching is found by comparing, for every selected namespace.
    for (const namespace of this.selected) this.queue.add(namespace);
  }

  private applyConfigMap(type: "ADDED" | "MODIFIED" | "DELETED", configMap: ConfigMap): void {
    const namespace = configMap.metadata?.namespace;
    if (!namespace) return;
    // A ConfigMap whose label was removed leaves the watched selection with a DELETED event too.
    this.remember(namespace, type === "DELETED" ? undefined : configMap);
    if (this.selected.has(namespace)) this.queue.add(namespace);
  }

  /** List, then watch from the list's version; resume after a clean end, list again after anything else. */
  private async inform<T extends KubeObject>(signal: AbortSignal, spec: InformerSpec<T>): Promise<void> {
    const what = spec.type.plural;
    let resourceVersion: string | undefined;
    let failures = 0;
    let watching = false;
    while (!signal.aborted) {
      try {
        watching = false;
        if (resourceVersion === undefined) {
          const list = await this.client.list(spec.type, {
            ...(spec.labelSelector ? { labelSelector: spec.labelSelector } : {}),
            ...(spec.fieldSelector ? { fieldSelector: spec.fieldSelector } : {}),
            signal,
          });
          this.forbidden.succeeded("list", what);
          spec.replace(list.items);
          resourceVersion = list.metadata.resourceVersion ?? "";
        }
        watching = true;
        const events = this.client.watch(spec.type, {
          ...(resourceVersion === "" ? {} : { resourceVersion }),
          ...(spec.labelSelector ? { labelSelector: spec.labelSelector } : {}),
          ...(spec.fieldSelector ? { fieldSelector: spec.fieldSelector } : {}),
          ...(this.watchTimeoutSeconds === undefined ? {} : { timeoutSeconds: this.watchTimeoutSeconds }),
          signal,
        });
        for await (const event of events) {
          failures = 0;
          this.forbidden.succeeded("watch", what);
          if (event.type === "BOOKMARK") {
            resourceVersion = event.object.metadata.resourceVersion;
            continue;
          }
          spec.apply(event.type, event.object);
          resourceVersion = event.object.metadata?.resourceVersion ?? resourceVersion;
        }
        // The server ended the watch (its timeout): resume where we were.
        failures = 0;
      } catch (error) {
        if (signal.aborted) return;
        resourceVersion = undefined;
        if (isGone(error) && failures === 0) {
          failures++;
          this.logger.info(
            { event: "trust_bundle.relist", resource: what, reason: "expired" },
            `the ${what} watch fell behind the API server's history (410); listing again`,
          );
          continue;
        }
        const delayMs = Math.round(backoffDelay(failures, this.retryBaseMs, this.retryCapMs));
        if (isForbidden(error)) {
          this.forbidden.report(error);
        } else if (watching && error instanceof KubeConnectionError && failures === 0) {
          this.logger.info(
            {
              event: "trust_bundle.relist",
              resource: what,
              reason: "disconnected",
              error: error.message,
              delayMs,
            },
            `the ${what} watch broke off; listing again`,
          );
        } else if (failures === 0) {
          this.logger.warn(
            { event: "trust_bundle.list_failed", resource: what, error: errorText(error), delayMs },
            `cannot list or watch ${what}; retrying with backoff`,
          );
        }
        failures++;
        await sleepQuietly(delayMs, signal);
      }
    }
  }

  // ----- workers ----------------------------------------------------------------------------

  private async work(queue: WorkQueue, synced: Promise<void>, signal: AbortSignal): Promise<void> {
    await Promise.race([synced, queue.closed]);
    for (;;) {
      const namespace = await queue.get();
      if (namespace === undefined) return;
      try {
        await this.reconcile(namespace, signal);
        this.failures.delete(namespace);
      } catch (error) {
        if (signal.aborted) {
          queue.done(namespace);
          return;
        }
        const attempt = this.failures.get(namespace) ?? 0;
        this.failures.set(namespace, attempt + 1);
        const delayMs = Math.round(backoffDelay(attempt, this.retryBaseMs, this.retryCapMs));
        this.reportWriteError(namespace, error, attempt, delayMs);
        queue.addAfter(namespace, delayMs);
      }
      queue.done(namespace);
    }
  }

  /** Makes one namespace's ConfigMap hold the current bundle; throws to be retried later. */
  private async reconcile(namespace: string, signal: AbortSignal): Promise<void> {
    let current = this.cache.get(namespace);
    for (let round = 0; round < ROUNDS_PER_RECONCILE; round++) {
      if (!this.selected.has(namespace)) return;
      if (current === undefined) {
        try {
          // Create-if-absent: AlreadyExists is an answer, so a create that may have landed can repeat.
          const created = await this.client.create(CONFIG_MAPS, this.fresh(namespace), {
            namespace,
            signal,
            idempotent: true,
          });
          this.forbidden.succeeded("create", CONFIG_MAPS.plural);
          this.written(namespace, created, "created");
          this.logger.info(
            { event: "trust_bundle.configmap_created", namespace, configMap: this.configMapName },
            "created the trust-bundle ConfigMap",
          );
          return;
        } catch (error) {
          if (isAlreadyExists(error)) {
            // Not in our cache: made by someone else, or its label was removed. Read it and decide.
            current = await this.read(namespace, signal);
            continue;
          }
          if (isNamespaceGone(error)) {
            this.logger.debug({ event: "trust_bundle.namespace_gone", namespace }, "namespace is going away");
            return;
          }
          throw error;
        }
      }
      if (this.isCurrent(current)) {
        this.remember(namespace, current);
        return;
      }
      const before = current.data?.[TRUST_BUNDLE_KEY];
      try {
        const updated = await this.client.update(CONFIG_MAPS, this.repaired(current), { namespace, signal });
        this.forbidden.succeeded("update", CONFIG_MAPS.plural);
        this.written(namespace, updated, "updated");
        const rollout = before !== undefined && this.distributed.has(before);
        const fields = { event: "trust_bundle.configmap_updated", namespace, configMap: this.configMapName };
        if (rollout) this.logger.debug(fields, "updated the trust-bundle ConfigMap to the new bundle");
        else this.logger.info({ ...fields, repaired: true }, "repaired an edited trust-bundle ConfigMap");
        return;
      } catch (error) {
        if (isConflict(error)) {
          this.writes.inc({ result: "conflict" });
          current = await this.read(namespace, signal);
          continue;
        }
        if (isNotFound(error)) {
          current = undefined;
          continue;
        }
        throw error;
      }
    }
    throw new Error(
      `ConfigMap ${namespace}/${this.configMapName} changed under every one of ${ROUNDS_PER_RECONCILE} attempts`,
    );
  }

  private async read(namespace: string, signal: AbortSignal): Promise<ConfigMap | undefined> {
    try {
      const configMap = await this.client.get(CONFIG_MAPS, this.configMapName, { namespace, signal });
      this.forbidden.succeeded("get", CONFIG_MAPS.plural);
      return configMap;
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  private written(namespace: string, configMap: ConfigMap, result: WriteResult): void {
    this.writes.inc({ result });
    this.remember(namespace, configMap);
  }

  private reportWriteError(namespace: string, error: unknown, attempt: number, delayMs: number): void {
    if (isForbidden(error)) {
      this.writes.inc({ result: "forbidden" });
      this.forbidden.report(error);
      return;
    }
    this.writes.inc({ result: "error" });
    const fields = {
      event: "trust_bundle.write_failed",
      namespace,
      configMap: this.configMapName,
      attempt: attempt + 1,
      delayMs,
      error: errorText(error),
    };
    // The first failure of a streak is news; the retries that follow are not.
    if (attempt === 0)
      this.logger.warn(fields, "cannot write the trust-bundle ConfigMap; retrying with backoff");
    else this.logger.debug(fields, "trust-bundle ConfigMap write failed again");
  }
}

// ---------------------------------------------------------------------------------------------

interface InformerSpec<T extends KubeObject> {
  readonly type: ResourceType<T>;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  replace(items: readonly T[]): void;
  apply(type: "ADDED" | "MODIFIED" | "DELETED", object: T): void;
}

/**
 * client-go's workqueue in miniature: a key is queued at most once, and never handed to two
 * workers at once (an add while it is being worked on re-queues it when done).
 */
class WorkQueue {
  private readonly queue: string[] = [];
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private waiters: (() => void)[] = [];
  private shut = false;
  private markClosed: () => void = () => undefined;
  /** Resolves on shutdown. */
  readonly closed = new Promise<void>((resolve) => {
    this.markClosed = resolve;
  });

  add(key: string): void {
    if (this.shut || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    this.queue.push(key);
    this.waiters.shift()?.();
  }

  addAfter(key: string, ms: number): void {
    if (this.shut) return;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.add(key);
    }, ms);
    this.timers.add(timer);
  }

  /** The next key, or undefined once shut down. */
  async get(): Promise<string | undefined> {
    while (this.queue.length === 0) {
      if (this.shut) return undefined;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    if (this.shut) return undefined;
    const key = this.queue.shift() as string;
    this.dirty.delete(key);
    this.processing.add(key);
    return key;
  }

  done(key: string): void {
    if (!this.processing.delete(key)) return;
    if (this.dirty.has(key) && !this.shut) {
      this.queue.push(key);
      this.waiters.shift()?.();
    }
  }

  shutdown(): void {
    if (this.shut) return;
    this.shut = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const wake of this.waiters) wake();
    this.waiters = [];
    this.markClosed();
  }
}

/**
 * RBAC denials are configuration errors an operator must fix: one clear line per verb and resource
 * (the API error names both, and what to grant), not one per namespace and retry, until it works.
 */
function isActive(namespace: Namespace): boolean {
  return namespace.metadata?.deletionTimestamp === undefined && namespace.status?.phase !== "Terminating";
}

/** Creating in a namespace that is gone (404) or being deleted (403 NamespaceTerminating) is no error of ours. */
function isNamespaceGone(error: unknown): boolean {
  if (!(error instanceof KubeApiError)) return false;
  if (error.status === 404) return true;
  return (
    error.status === 403 &&
    (error.details?.causes ?? []).some((cause) => cause.reason === "NamespaceTerminating")
  );
}

function sleepQuietly(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
