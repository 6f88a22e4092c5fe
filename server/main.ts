// `osm-cert server`: the only place the server's real parts are wired together.

import cluster from "node:cluster";
import { createHash, X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { availableParallelism } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { AdminServer, parseHostPort } from "../common/admin-http.js";
import { formatDuration } from "../common/duration.js";
import { FlagError, type ParsedFlags, parseFlags } from "../common/flags.js";
import type { KeyAlgorithm } from "../common/keys.js";
import { waitForSignal } from "../common/lifecycle.js";
import { createLogger, type Logger } from "../common/logger.js";
import { MetricsRegistry } from "../common/metrics.js";
import { registerProcessMetrics } from "../common/process-metrics.js";
import { MutableCertificateProvider } from "../common/tls-material.js";
import { AgentRegistry, type AgentSummary } from "./agent-registry.js";
import { CallerAuthenticator, ClientCertificateAuthenticator } from "./authn.js";
import { SERVER_FLAGS } from "./flags.js";
import { inClusterConfig, KubeClient, loadKubeconfig } from "./kubernetes/client.js";
import { LeaderElector } from "./kubernetes/leader-election.js";
import { KubeTokenReviewer } from "./kubernetes/token-reviewer.js";
import { TrustBundleDistributor } from "./kubernetes/trust-bundle-distributor.js";
import { CertManagerProvider } from "./providers/cert-manager/cert-manager.js";
import type { CertificateProvider } from "./providers/provider.js";
import { DirectoryCaStore } from "./providers/tresor/directory-store.js";
import { followedSecretCaStore } from "./providers/tresor/secret-rotation-store.js";
import { type CaStore, TresorProvider } from "./providers/tresor/tresor.js";
import { openVaultProvider } from "./providers/vault/config.js";
import { followRenewOrders, renewOrderStore } from "./renew/follow-renew-orders.js";
import { RequestGuard } from "./request-guard.js";
import { meshServerCredentials } from "./server-credentials.js";
import { ServingCertificate } from "./serving-certificate.js";
import { SigningLimits } from "./signing-limits.js";
import { SigningService } from "./signing-service.js";
import { TokenAuthenticator } from "./token-review.js";

export type ServerFlags = ParsedFlags<typeof SERVER_FLAGS>;

/** gRPC messages above this are refused by grpc-js itself with RESOURCE_EXHAUSTED. */
export const MAX_MESSAGE_BYTES = 16 * 1024;
/** HTTP/2 streams one connection may hold at once (an agent uses two). */
const MAX_STREAMS_PER_CONNECTION = 16;
/** A connection with no call in flight is closed after this long. */
const IDLE_CONNECTION_MS = 5 * 60_000;
/**
 * close() lets in-flight calls finish for this long before cutting connections (a signing call
 * takes milliseconds; a cut one fails with UNAVAILABLE, which agents retry elsewhere).
 */
const SHUTDOWN_GRACE_MS = 1_500;
/** After close(), the process exits within this long even if a cut connection left a timer behind. */
const LINGER_MS = 500;

export class StartupError extends Error {
  readonly code = "ERR_OSM_CERT_STARTUP";
}

/**
 * The Kubernetes API, when there is one: --kubeconfig, or the in-cluster credentials of a pod.
 * Null outside Kubernetes (the embedded default with --ca-dir).
 */
export async function openKubeClient(flags: ServerFlags, logger: Logger): Promise<KubeClient | null> {
  try {
    if (flags.kubeconfig !== undefined) {
      return new KubeClient({
        config: await loadKubeconfig(flags.kubeconfig),
        logger,
        userAgent: "osm-cert-server",
      });
    }
    if (process.env.KUBERNETES_SERVICE_HOST) {
      return new KubeClient({ config: await inClusterConfig(), logger, userAgent: "osm-cert-server" });
    }
  } catch (error) {
    throw new StartupError(`Kubernetes API: ${(error as Error).message}`);
  }
  return null;
}

function caStore(flags: ServerFlags, kube: KubeClient | null): CaStore {
  if (flags["ca-dir"] !== undefined) return new DirectoryCaStore(flags["ca-dir"]);
  if (kube !== null) {
    // Root rotation (issue 9): every replica follows the rotation Secret beside the CA bundle.
    return followedSecretCaStore(kube, flags["osm-namespace"], flags["ca-bundle-secret-name"]);
  }
  throw new StartupError(
    "tresor needs a place for its root: --ca-dir, or a Kubernetes API (--kubeconfig or in-cluster)",
  );
}

export async function openProvider(
  flags: ServerFlags,
  logger: Logger,
  kube: KubeClient | null = null,
): Promise<CertificateProvider> {
  switch (flags["certificate-manager"]) {
    case "tresor": {
      return TresorProvider.open({
        store: caStore(flags, kube),
        root: {
          keyAlgorithm: flags["ca-key-algorithm"] as KeyAlgorithm,
          commonName: flags["ca-common-name"],
          validityMs: flags["ca-validity"],
        },
        onRoot: ({ created, where, expiration }) =>
          logger.info(
            { event: created ? "root.created" : "root.loaded", where, expiration },
            created ? "generated a new mesh root" : "loaded the mesh root",
          ),
        // Root rotation (issue 9): follow the store's rotation state while serving.
        follow: true,
        onRotation: (event) =>
          event.kind === "switched"
            ? logger.info(
                { event: "root.switched", ...event, kind: undefined },
                "followed the root rotation state: new trust bundle and/or signing root",
              )
            : logger.error(
                { event: "root.rotation_state_unusable", error: event.error },
                "ignoring an unusable root rotation state; keeping the current roots",
              ),
      });
    }
    case "vault":
      return openVaultProvider(flags, logger, kube);
    case "cert-manager": {
      if (kube === null) {
        throw new FlagError(
          "server: invalid --certificate-manager: cert-manager needs a Kubernetes API (--kubeconfig, or in-cluster credentials)",
        );
      }
      try {
        return await CertManagerProvider.open({
          client: kube,
          namespace: flags["osm-namespace"],
          issuer: {
            name: flags["cert-manager-issuer-name"],
            kind: flags["cert-manager-issuer-kind"] as "Issuer" | "ClusterIssuer",
            group: flags["cert-manager-issuer-group"],
          },
          caBundleSecretName: flags["ca-bundle-secret-name"],
          preserveRequests: flags["cert-manager-preserve-requests"],
          requestTimeoutMs: flags["cert-manager-request-timeout"],
          maxInFlight: flags["cert-manager-max-in-flight"],
          maxQueued: flags["cert-manager-max-queued"],
          logger,
        });
      } catch (error) {
        throw new StartupError(`cert-manager: ${(error as Error).message}`);
      }
    }
    default:
      throw new FlagError(
        `server: invalid --certificate-manager: ${flags["certificate-manager"]} is not available in this build; use tresor, vault or cert-manager`,
      );
  }
}

/**
 * In Kubernetes mode, one replica at a time (elected through a Lease) keeps the trust-bundle
 * ConfigMap in every selected namespace; the others only sign. Returns the function that stops it.
 */
export function startTrustBundleDistribution(
  flags: ServerFlags,
  kube: KubeClient | null,
  provider: CertificateProvider,
  logger: Logger,
  metrics: MetricsRegistry,
): () => Promise<void> {
  if (kube === null || flags["trust-bundle-configmap-name"] === "") return async () => {};
  const distributor = new TrustBundleDistributor({
    client: kube,
    provider,
    namespaceSelector: flags["namespace-selector"],
    configMapName: flags["trust-bundle-configmap-name"],
    logger,
    metrics,
  });
  const leaseSeconds = Math.max(1, Math.round(flags["leader-lease-duration"] / 1000));
  const elector = new LeaderElector({
    client: kube,
    namespace: flags["osm-namespace"],
    name: flags["leader-election-lease"],
    logger,
    metrics,
    leaseDurationSeconds: leaseSeconds,
    // client-go's proportions: renew deadline 2/3 and retry period 2/15 of the lease duration.
    renewDeadlineMs: Math.round((leaseSeconds * 1000 * 2) / 3),
    retryPeriodMs: Math.max(200, Math.round((leaseSeconds * 1000 * 2) / 15)),
    onStartedLeading: (signal) => distributor.run(signal),
  });
  const stop = new AbortController();
  const running = elector.run(stop.signal).catch((error: unknown) => {
    logger.error({ event: "leader_election.failed", error: String(error) }, "leader election stopped");
  });
  return async () => {
    stop.abort();
    await running;
  };
}

export interface RunningServer {
  readonly address: string;
  /** "" in a worker process (the primary serves the admin endpoint: workers.ts). */
  readonly adminAddress: string;
  /** What a worker reports to the primary's admin endpoint (workers.ts). */
  snapshot(): WorkerSnapshot;
  close(): Promise<void>;
}

export interface StartOptions {
  /**
   * A worker of `--workers N` (workers.ts): serves the signing port only. The primary process does
   * the one-per-process work (leader election and ConfigMaps, the admin endpoint).
   */
  readonly worker?: boolean;
}

/** Flag combinations no single flag's check can see; each stops start-up with exit code 2. */
export function checkServerFlags(flags: ServerFlags): void {
  const max = flags["service-cert-validity-duration"];
  const min = flags["min-cert-validity"];
  if (max <= 0) {
    throw new FlagError("server: invalid --service-cert-validity-duration: must be longer than 0");
  }
  if (min > max) {
    throw new FlagError(
      `server: invalid --min-cert-validity: ${formatDuration(min)} is longer than --service-cert-validity-duration (${formatDuration(max)})`,
    );
  }
  if (flags["serving-cert-validity"] < 60_000) {
    throw new FlagError("server: invalid --serving-cert-validity: must be at least 1m");
  }
}

export async function startServer(
  flags: ServerFlags,
  logger: Logger,
  options: StartOptions = {},
): Promise<RunningServer> {
  const worker = options.worker === true;
  checkServerFlags(flags);
  const metrics = new MetricsRegistry();
  const kube = await openKubeClient(flags, logger);
  const provider = await openProvider(flags, logger, kube);
  const bundle = provider.trustBundle();
  const tls = new MutableCertificateProvider();
  tls.setCaCertificates(bundle.roots.join(""));
  const serving = new ServingCertificate({
    provider,
    tls,
    trustDomain: flags["trust-domain"],
    sans: flags["server-san"],
    validityMs: flags["serving-cert-validity"],
    logger,
  });
  await serving.start();
  provider.onTrustBundleChange((next) => tls.setCaCertificates(next.roots.join("")));
  // A new signing root: our own serving certificate moves under it at once (issue 9).
  provider.onSigningRootChange?.(() => {
    serving
      .renew()
      .catch((error: unknown) =>
        logger.error(
          { event: "serving_cert.renewal_failed", error: (error as Error).message },
          "could not re-issue the serving certificate under the new signing root",
        ),
      );
  });

  const rootExpiry = metrics.gauge(
    "osm_cert_server_root_expiry_timestamp_seconds",
    "notAfter of each trusted root.",
  );
  metrics
    .gauge("osm_cert_server_info", "Build and configuration.")
    .set(1, { provider: provider.name, trust_domain: flags["trust-domain"] });
  const showRoots = (roots: readonly string[]) => {
    for (const pem of roots) {
      const cert = new X509Certificate(pem);
      rootExpiry.set(Date.parse(cert.validTo) / 1000, { serial: cert.serialNumber });
    }
  };
  showRoots(bundle.roots);
  provider.onTrustBundleChange((next) => showRoots(next.roots));
  const agents = new AgentRegistry(metrics);
  const startedAt = new Date();

  const guard = new RequestGuard({
    receiveTimeoutMs: flags["request-receive-timeout"],
    maxReceiving: flags["max-receiving-requests"],
    metrics,
  });
  const server = new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": 64 * 1024,
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_permit_without_calls": 1,
    // An agent needs two streams (CreateCertificate, WatchTrustBundle); a peer may not hold more
    // than this many on one connection, nor keep a connection with no call open for long.
    "grpc.max_concurrent_streams": MAX_STREAMS_PER_CONNECTION,
    "grpc.max_connection_idle_ms": IDLE_CONNECTION_MS,
    // Channelz keeps a record of every socket and call; nobody reads it here, and it pins memory.
    "grpc.enable_channelz": 0,
    interceptors: [guard.interceptor],
  });
  // Operator renew-now orders (osm-cert renew), scoped per caller by the signing service.
  const renewOrders = followRenewOrders({
    store: renewOrderStore(flags["ca-dir"], kube, flags["osm-namespace"]),
    provider,
    logger,
    metrics,
  });
  const signing = new SigningService({
    provider,
    authenticator: new CallerAuthenticator(
      new ClientCertificateAuthenticator(flags["trust-domain"]),
      kube === null
        ? null
        : new TokenAuthenticator({
            reviewer: new KubeTokenReviewer(kube),
            audience: flags["token-audience"],
            logger,
          }),
    ),
    limits: {
      trustDomain: flags["trust-domain"],
      maxValidityMs: flags["service-cert-validity-duration"],
      minValidityMs: flags["min-cert-validity"],
      reservedDnsNames: new Set(
        flags["server-san"].filter((name) => isIP(name) === 0).map((name) => name.toLowerCase()),
      ),
    },
    logger,
    metrics,
    agents,
    loadLimits: new SigningLimits({
      maxInFlight: flags["max-in-flight-signings"],
      perIdentityRate: flags["per-identity-signing-rate"],
      perIdentityBurst: flags["per-identity-signing-burst"],
      metrics,
    }),
    renewOrders: renewOrders.book,
  });
  signing.register(server);

  // Client certificates requested, not required (the handler decides); no session tickets (first contact's cost).
  const credentials = meshServerCredentials(tls, tls);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(flags.listen, credentials, (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const stopLeading = worker
    ? async () => {}
    : startTrustBundleDistribution(flags, kube, provider, logger, metrics);
  const listen = parseHostPort(flags.listen);
  const address = `${listen.host}:${port}`;

  let ready = true;
  // A worker has no admin endpoint of its own: its metrics (process metrics included) and agent
  // counts reach the primary's through snapshot().
  const admin = worker
    ? null
    : new AdminServer({
        metrics,
        notReadyReason: () => (ready ? null : "shutting down"),
        stallThresholdMs: flags["liveness-stall-threshold"],
        status: () => rotationStatus(provider, agents, flags, startedAt),
      });
  const workerProcessMetrics = worker ? registerProcessMetrics(metrics) : null;
  let adminAddress = "";
  if (admin !== null) {
    const adminBound = await admin.listen(parseHostPort(flags["admin-listen"]));
    adminAddress = `${adminBound.host}:${adminBound.port}`;
  }
  logger.info(
    {
      event: worker ? "server.worker_started" : "server.started",
      address,
      admin: adminAddress,
      provider: provider.name,
      trustDomain: flags["trust-domain"],
    },
    "signing server listening",
  );

  return {
    address,
    adminAddress,
    snapshot: () => ({
      metrics: metrics.render(),
      agents: {
        byVersion: agents.counts(),
        notOnCurrent: agents.notOn(provider.trustBundle().version, AGENTS_LISTED),
      },
    }),
    async close() {
      ready = false;
      serving.stop();
      renewOrders.stop();
      await stopLeading();
      // Watch streams never end by themselves; ending them lets tryShutdown finish at once.
      signing.close();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, SHUTDOWN_GRACE_MS);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      // Whatever a peer still holds open after the graceful part (an agent's idle channel that
      // connected while watches were ending) is cut, so the process can exit.
      server.forceShutdown();
      await admin?.close();
      workerProcessMetrics?.stop();
      await provider.close();
      await kube?.close();
    },
  };
}

/** Agents not on the current bundle listed by /status (the rest are only counted). */
export const AGENTS_LISTED = 100;

export interface WorkerSnapshot {
  /** The worker's metrics in the text exposition format. */
  readonly metrics: string;
  readonly agents: { readonly byVersion: Record<string, number>; readonly notOnCurrent: AgentSummary[] };
}

/** --workers: "auto" is every CPU this process may run on (its affinity mask, not a cgroup quota). */
export function workerCount(value: string): number {
  return value === "auto" ? availableParallelism() : Number(value);
}

/** What `osm-cert rotate-root` reads from each replica's admin /status (issue 9). */
export function rotationStatus(
  provider: CertificateProvider,
  agents: AgentRegistry,
  flags: ServerFlags,
  startedAt: Date,
) {
  const bundle = provider.trustBundle();
  return {
    provider: provider.name,
    // A replica that just started has not heard from every agent yet; rotate-root waits for a while.
    startedAt: startedAt.toISOString(),
    trustBundle: {
      version: bundle.version,
      roots: bundle.roots.map((pem) => {
        const cert = new X509Certificate(pem);
        return {
          sha256: createHash("sha256").update(cert.raw).digest("hex"),
          notAfter: new Date(cert.validTo).toISOString(),
        };
      }),
    },
    rotation: provider.rotationStatus?.() ?? null,
    renewOrder: provider.renewOrder?.() ?? null,
    maxServiceCertValidityMs: flags["service-cert-validity-duration"],
    agents: { byVersion: agents.counts(), notOnCurrent: agents.notOn(bundle.version, AGENTS_LISTED) },
  };
}

export async function serverCommand(argv: readonly string[]): Promise<void> {
  const flags = parseFlags("server", SERVER_FLAGS, argv);
  // Asynchronous stdout: an audit line per issuance must not cost a blocking write each.
  const logger = createLogger("osm-cert-server", { async: true });
  const workers = workerCount(flags.workers);
  if (workers > 1 || cluster.isWorker) {
    const { runPrimary, runWorker } = await import("./workers.js");
    await (cluster.isWorker ? runWorker(flags, logger) : runPrimary(flags, logger, workers));
    return;
  }
  const running = await startServer(flags, logger);
  await waitForSignal(logger);
  await running.close();
  logger.info({ event: "server.stopped" }, "signing server stopped");
  // Everything is closed, but a session grpc-js cut by force can still hold its keepalive or idle
  // timer (60 s, 5 min) and keep the process alive that long (seen in test/integration/shutdown).
  // The timer is unref'd: a process with nothing left exits at once, as before.
  setTimeout(() => process.exit(0), LINGER_MS).unref();
}
