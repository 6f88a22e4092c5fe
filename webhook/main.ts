// `osm-cert webhook`: the only place the webhook's real parts are wired together (flags → config →
// components). Admin endpoints come up first, so a probe sees "waiting for the mesh root" rather
// than a refused connection while the signing server has not created the root yet.

import { AdminServer, formatHostPort, parseHostPort } from "../common/admin-http.js";
import { FlagError, type ParsedFlags, parseFlags } from "../common/flags.js";
import { waitForSignal } from "../common/lifecycle.js";
import { createLogger, type Logger } from "../common/logger.js";
import { MetricsRegistry } from "../common/metrics.js";
import { inClusterConfig, KubeClient, loadKubeconfig } from "../server/kubernetes/client.js";
import { DirectoryCaStore } from "../server/providers/tresor/directory-store.js";
import { followedSecretCaStore } from "../server/providers/tresor/secret-rotation-store.js";
import { TresorProvider } from "../server/providers/tresor/tresor.js";
import type { InjectionConfig } from "./agent-sidecar.js";
import { CaBundleKeeper } from "./ca-bundle-keeper.js";
import { WaitingCaStore } from "./ca-store.js";
import { WEBHOOK_FLAGS } from "./flags.js";
import { AdmissionServer } from "./https-server.js";
import { reviewPod } from "./pod-admission.js";
import { expirySeconds, issueServingCertificate, ServingCertRenewer, servingNames } from "./serving-cert.js";

export type WebhookFlags = ParsedFlags<typeof WEBHOOK_FLAGS>;

export class WebhookStartupError extends Error {
  readonly code = "ERR_OSM_CERT_WEBHOOK_STARTUP";
}

export function injectionConfig(flags: WebhookFlags): InjectionConfig {
  return {
    agentImage: flags["agent-image"],
    agentImagePullPolicy: flags["agent-image-pull-policy"],
    signingServer: flags["signing-server"],
    tokenAudience: flags["token-audience"],
    tokenExpirationSeconds: Math.round(flags["token-expiration"] / 1000),
    trustBundleConfigMapName: flags["trust-bundle-configmap-name"],
    envoyUid: flags["envoy-uid"],
    trustDomain: flags["trust-domain"],
    resources: {
      cpuRequest: flags["agent-cpu-request"],
      memoryRequest: flags["agent-memory-request"],
      memoryLimit: flags["agent-memory-limit"],
      cpuLimit: flags["agent-cpu-limit"],
    },
  };
}

/** Flag combinations no table can express; a FlagError (exit 2) names the flag. */
export function checkWebhookFlags(flags: WebhookFlags): void {
  if (flags["certificate-manager"] !== "tresor")
    throw new FlagError(
      `webhook: invalid --certificate-manager: "${flags["certificate-manager"]}" cannot issue the webhook's serving certificate in this build; use tresor`,
    );
  if (flags["agent-image"].trim() === "" || /\s/.test(flags["agent-image"]))
    throw new FlagError(
      `webhook: invalid --agent-image: "${flags["agent-image"]}" is not an image reference`,
    );
}

async function openKube(flags: WebhookFlags, logger: Logger): Promise<KubeClient | null> {
  try {
    if (flags.kubeconfig !== undefined)
      return new KubeClient({
        config: await loadKubeconfig(flags.kubeconfig),
        logger,
        userAgent: "osm-cert-webhook",
      });
    if (process.env.KUBERNETES_SERVICE_HOST)
      return new KubeClient({ config: await inClusterConfig(), logger, userAgent: "osm-cert-webhook" });
  } catch (error) {
    throw new WebhookStartupError(`Kubernetes API: ${(error as Error).message}`);
  }
  return null;
}

export interface RunningWebhook {
  readonly address: string;
  readonly adminAddress: string;
  close(): Promise<void>;
}

export interface WebhookTestHooks {
  /** Fraction of the serving certificate's lifetime after which it is renewed (default 0.5). */
  readonly renewFraction?: number;
  /** caBundle resync period (default 30s). */
  readonly resyncMs?: number;
}

export async function startWebhook(
  flags: WebhookFlags,
  logger: Logger,
  signal: AbortSignal,
  hooks: WebhookTestHooks = {},
): Promise<RunningWebhook> {
  checkWebhookFlags(flags);
  const config = injectionConfig(flags);
  const names = servingNames(flags["webhook-service"], flags["osm-namespace"]);
  const metrics = new MetricsRegistry();
  const certExpiry = metrics
    .gauge(
      "osm_cert_webhook_serving_cert_expiry_timestamp_seconds",
      "notAfter of the certificate the webhook serves.",
    )
    .zero();
  let notReady: string | null = "waiting for the mesh root to issue the serving certificate";
  const admin = new AdminServer({ metrics, notReadyReason: () => notReady });
  const adminBound = await admin.listen(parseHostPort(flags["admin-listen"]));
  logger.info(
    { event: "webhook.admin_listening", admin: formatHostPort(adminBound) },
    "admin endpoints up; ready once the serving certificate is issued",
  );
  const stops: (() => Promise<void>)[] = [() => admin.close()];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop();
  };
  try {
    const kube = await openKube(flags, logger);
    if (kube !== null) stops.push(() => kube.close());
    const store =
      flags["ca-dir"] !== undefined
        ? new DirectoryCaStore(flags["ca-dir"])
        : kube !== null
          ? followedSecretCaStore(kube, flags["osm-namespace"], flags["ca-bundle-secret-name"])
          : null;
    if (store === null)
      throw new WebhookStartupError(
        "the serving certificate needs the mesh root: --ca-dir, or a Kubernetes API (--kubeconfig or in-cluster)",
      );
    const provider = await TresorProvider.open({
      store: new WaitingCaStore({ store, logger, signal }),
      // Never used: the waiting store always returns the server's root, never asks for a new one.
      root: { keyAlgorithm: "ecdsa-p256", commonName: "unused", validityMs: 1 },
      // Root rotation (issue 9): follow the rotation state as the signing server does: the caBundle
      // keeper publishes old + new while both are trusted, the serving cert moves to the new root.
      follow: true,
      onRotation: (event) =>
        event.kind === "switched"
          ? logger.info(
              {
                event: "root.switched",
                phase: event.phase,
                bundleVersion: event.bundleVersion,
                roots: event.roots,
              },
              "followed the root rotation state: new trust bundle and/or signing root",
            )
          : logger.error(
              { event: "root.rotation_state_unusable", error: event.error },
              "ignoring an unusable root rotation state; keeping the current roots",
            ),
    });
    stops.push(() => provider.close());

    const first = await issueServingCertificate(provider, names, flags["serving-cert-validity"]);
    certExpiry.set(expirySeconds(first.certPem));
    const server = new AdmissionServer({
      identity: first,
      review: (request) => reviewPod(request, config),
      logger,
      metrics,
    });
    const bound = await server.listen(parseHostPort(flags.listen));
    stops.push(() => server.close());

    const background = new AbortController();
    const tasks: Promise<void>[] = [];
    stops.push(async () => {
      background.abort();
      await Promise.allSettled(tasks);
    });
    const renewer = new ServingCertRenewer({
      current: first,
      issue: () => issueServingCertificate(provider, names, flags["serving-cert-validity"]),
      onRenewed: (next) => {
        server.setIdentity(next);
        certExpiry.set(expirySeconds(next.certPem));
      },
      logger,
      ...(hooks.renewFraction === undefined ? {} : { renewFraction: hooks.renewFraction }),
    });
    tasks.push(renewer.run(background.signal));
    provider.onSigningRootChange(() => renewer.renewNow());
    if (kube !== null && flags["webhook-config-name"] !== "") {
      const keeper = new CaBundleKeeper({
        client: kube,
        name: flags["webhook-config-name"],
        provider,
        logger,
        metrics,
        ...(hooks.resyncMs === undefined ? {} : { resyncMs: hooks.resyncMs }),
      });
      tasks.push(keeper.run(background.signal));
    }
    notReady = null;
    const address = formatHostPort(bound);
    const adminAddress = formatHostPort(adminBound);
    logger.info(
      {
        event: "webhook.started",
        address,
        admin: adminAddress,
        serviceName: names.commonName,
        serial: first.serialNumber,
        notAfter: first.notAfter.toISOString(),
        caBundleKeeper:
          kube !== null && flags["webhook-config-name"] !== "" ? flags["webhook-config-name"] : null,
      },
      "injection webhook listening",
    );
    return {
      address,
      adminAddress,
      async close() {
        notReady = "shutting down";
        await stopAll();
      },
    };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

export async function webhookCommand(argv: readonly string[]): Promise<void> {
  const flags = parseFlags("webhook", WEBHOOK_FLAGS, argv);
  checkWebhookFlags(flags);
  const logger = createLogger("osm-cert-webhook");
  const stop = new AbortController();
  const signalled = waitForSignal(logger).then(() => stop.abort());
  let running: RunningWebhook;
  try {
    running = await startWebhook(flags, logger, stop.signal);
  } catch (error) {
    if (stop.signal.aborted) return;
    throw error;
  }
  await signalled;
  await running.close();
  logger.info({ event: "webhook.stopped" }, "injection webhook stopped");
}
