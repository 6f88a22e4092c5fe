// `osm-cert server`: the only place the server's real parts are wired together.

import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { AdminServer, parseHostPort } from "../common/admin-http.js";
import { type ParsedFlags, parseFlags } from "../common/flags.js";
import { generateKeyPair, type KeyAlgorithm, privateKeyToPem } from "../common/keys.js";
import { waitForSignal } from "../common/lifecycle.js";
import { createLogger, type Logger } from "../common/logger.js";
import { MetricsRegistry } from "../common/metrics.js";
import { encodePem } from "../common/pem.js";
import { MutableCertificateProvider } from "../common/tls-material.js";
import { createCsr, parseCsrDer } from "../common/x509/csr.js";
import { CallerAuthenticator, ClientCertificateAuthenticator } from "./authn.js";
import { SERVER_FLAGS } from "./flags.js";
import { inClusterConfig, KubeClient, loadKubeconfig } from "./kubernetes/client.js";
import { LeaderElector } from "./kubernetes/leader-election.js";
import { KubeTokenReviewer } from "./kubernetes/token-reviewer.js";
import { TrustBundleDistributor } from "./kubernetes/trust-bundle-distributor.js";
import type { CertificateProvider } from "./providers/provider.js";
import { DirectoryCaStore } from "./providers/tresor/directory-store.js";
import { SecretCaStore } from "./providers/tresor/secret-store.js";
import { type CaStore, TresorProvider } from "./providers/tresor/tresor.js";
import { openVaultProvider } from "./providers/vault/config.js";
import { SigningService } from "./signing-service.js";
import { TokenAuthenticator } from "./token-review.js";

export type ServerFlags = ParsedFlags<typeof SERVER_FLAGS>;

/** gRPC messages above this are refused by grpc-js itself with RESOURCE_EXHAUSTED. */
export const MAX_MESSAGE_BYTES = 16 * 1024;
const SERVING_CERT_VALIDITY_MS = 365 * 24 * 3_600_000;

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
    return new SecretCaStore({
      client: kube,
      namespace: flags["osm-namespace"],
      name: flags["ca-bundle-secret-name"],
    });
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
      });
    }
    case "vault":
      return openVaultProvider(flags, logger, kube);
    default:
      throw new StartupError(
        `--certificate-manager=${flags["certificate-manager"]} is not available in this build yet; use tresor or vault`,
      );
  }
}

/** The server's own TLS identity: a fresh key in memory, certified by the provider like any leaf. */
export async function issueServingCertificate(provider: CertificateProvider, sans: readonly string[]) {
  const { privateKey } = generateKeyPair("ecdsa-p256");
  const dnsNames = sans.filter((s) => isIP(s) === 0);
  const ipAddresses = sans.filter((s) => isIP(s) !== 0);
  const commonName = dnsNames[0] ?? "osm-cert";
  // Every name, IPs included: backends that read names from the CSR (Vault's use_csr_sans) see them all.
  const csrDer = createCsr({ privateKey, commonName, dnsNames, ipAddresses });
  const issued = await provider.issue({
    csrPem: encodePem("CERTIFICATE REQUEST", csrDer),
    csr: parseCsrDer(csrDer),
    profile: "server",
    commonName,
    dnsNames,
    uris: [],
    ipAddresses,
    validityMs: SERVING_CERT_VALIDITY_MS,
  });
  return { chainPem: issued.chainPem.join(""), keyPem: privateKeyToPem(privateKey), issued };
}

/**
 * Backends may cap the serving certificate's lifetime (Vault clamps to the role's max_ttl): re-issue it
 * at two thirds of its life, retrying every minute on failure while the current one is still valid.
 */
function renewServingCertificate(
  provider: CertificateProvider,
  sans: readonly string[],
  first: { notBefore: Date; notAfter: Date },
  tls: MutableCertificateProvider,
  logger: Logger,
): () => void {
  let timer: NodeJS.Timeout | undefined;
  const schedule = (notBefore: number, notAfter: number) => {
    const at = notBefore + ((notAfter - notBefore) * 2) / 3;
    // setTimeout holds at most ~24.8 days; a longer wait is taken in steps.
    timer = setTimeout(renew, Math.min(2 ** 31 - 1, Math.max(1_000, at - Date.now())), notBefore, notAfter);
    timer.unref();
  };
  const renew = (notBefore: number, notAfter: number) => {
    if (Date.now() < notBefore + ((notAfter - notBefore) * 2) / 3) return schedule(notBefore, notAfter);
    issueServingCertificate(provider, sans).then(
      (next) => {
        tls.setIdentity(next.chainPem, next.keyPem);
        logger.info(
          {
            event: "serving_cert.renewed",
            serial: next.issued.serialNumber,
            notAfter: next.issued.notAfter.toISOString(),
          },
          "renewed the server's own serving certificate",
        );
        schedule(next.issued.notBefore.getTime(), next.issued.notAfter.getTime());
      },
      (error: unknown) => {
        logger.error(
          { event: "serving_cert.renew_failed", error: String(error) },
          "could not renew the serving certificate",
        );
        timer = setTimeout(renew, 60_000, notBefore, notAfter);
        timer.unref();
      },
    );
  };
  schedule(first.notBefore.getTime(), first.notAfter.getTime());
  return () => clearTimeout(timer);
}

/**
 * In Kubernetes mode, one replica at a time (elected through a Lease) keeps the trust-bundle
 * ConfigMap in every selected namespace; the others only sign. Returns the function that stops it.
 */
function startTrustBundleDistribution(
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
  readonly adminAddress: string;
  close(): Promise<void>;
}

export async function startServer(flags: ServerFlags, logger: Logger): Promise<RunningServer> {
  const metrics = new MetricsRegistry();
  const kube = await openKubeClient(flags, logger);
  const provider = await openProvider(flags, logger, kube);
  const bundle = provider.trustBundle();
  const tls = new MutableCertificateProvider();
  tls.setCaCertificates(bundle.roots.join(""));
  const serving = await issueServingCertificate(provider, flags["server-san"]);
  tls.setIdentity(serving.chainPem, serving.keyPem);
  const stopServingRenewal = renewServingCertificate(
    provider,
    flags["server-san"],
    serving.issued,
    tls,
    logger,
  );
  provider.onTrustBundleChange((next) => tls.setCaCertificates(next.roots.join("")));

  const rootExpiry = metrics.gauge(
    "osm_cert_server_root_expiry_timestamp_seconds",
    "notAfter of each trusted root.",
  );
  metrics
    .gauge("osm_cert_server_info", "Build and configuration.")
    .set(1, { provider: provider.name, trust_domain: flags["trust-domain"] });
  for (const pem of bundle.roots) {
    const cert = new X509Certificate(pem);
    rootExpiry.set(Date.parse(cert.validTo) / 1000, { serial: cert.serialNumber });
  }

  const server = new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": 64 * 1024,
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_permit_without_calls": 1,
  });
  new SigningService({
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
    },
    logger,
    metrics,
  }).register(server);

  // Client certificates are requested but not required by TLS: the handler decides, so callers
  // without one get UNAUTHENTICATED with a reason instead of a bare handshake failure.
  const credentials = grpc.experimental.createCertificateProviderServerCredentials(tls, tls, false);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(flags.listen, credentials, (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const stopLeading = startTrustBundleDistribution(flags, kube, provider, logger, metrics);
  const listen = parseHostPort(flags.listen);
  const address = `${listen.host}:${port}`;

  let ready = true;
  const admin = new AdminServer({
    metrics,
    notReadyReason: () => (ready ? null : "shutting down"),
  });
  const adminBound = await admin.listen(parseHostPort(flags["admin-listen"]));
  const adminAddress = `${adminBound.host}:${adminBound.port}`;
  logger.info(
    {
      event: "server.started",
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
    async close() {
      ready = false;
      stopServingRenewal();
      await stopLeading();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 5_000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      await admin.close();
      await provider.close();
      await kube?.close();
    },
  };
}

export async function serverCommand(argv: readonly string[]): Promise<void> {
  const flags = parseFlags("server", SERVER_FLAGS, argv);
  const logger = createLogger("osm-cert-server");
  const running = await startServer(flags, logger);
  await waitForSignal(logger);
  await running.close();
  logger.info({ event: "server.stopped" }, "signing server stopped");
}
