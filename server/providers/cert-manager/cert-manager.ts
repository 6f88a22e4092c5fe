// cert-manager as the signing backend (DESIGN.md §7): each CSR becomes a CertificateRequest for the
// operator's issuer, bounded in number, followed by watch, checked, and deleted. The mesh root is
// `ca.crt` of the CA bundle Secret. Start-up refuses what can never work (no cert-manager, an ACME
// issuer, no CA bundle) with one line saying what to do, and sweeps requests an earlier life of this
// replica left behind.

import { hostname } from "node:os";
import { formatDuration } from "../../../common/duration.js";
import type { Logger } from "../../../common/logger.js";
import { KubeApiError, type KubeClient, KubeConnectionError } from "../../kubernetes/client.js";
import { PROFILE_USAGES } from "../profiles.js";
import {
  type CertificateProfile,
  type CertificateProvider,
  type IssuedCertificate,
  type IssueRequest,
  ProviderError,
  type TrustBundle,
} from "../provider.js";
import { CaBundleSecret } from "./ca-bundle.js";
import { CertManagerRefusal, runCertificateRequest } from "./certificate-request.js";
import { ChainCheckError, checkIssuedChain } from "./chain-check.js";
import { InFlightLimiter } from "./in-flight.js";
import { CERT_MANAGER_MISSING, checkIssuer, IssuerCheckError, isMissingApi } from "./issuer-check.js";
import { CertificateRequestWatch } from "./request-watch.js";
import { CERTIFICATE_REQUESTS, type CertificateRequest } from "./resources.js";

export const MANAGED_BY = { "app.kubernetes.io/managed-by": "osm-cert" } as const;
export const INSTANCE_LABEL = "osm-cert.io/instance";
export const IDENTITY_LABEL = "osm-cert.io/identity";
export const PROFILE_LABEL = "osm-cert.io/profile";
export const COMMON_NAME_ANNOTATION = "osm-cert.io/common-name";

export interface CertManagerOptions {
  readonly client: KubeClient;
  /** The OSM namespace: CertificateRequests, an Issuer, and the CA bundle Secret live here. */
  readonly namespace: string;
  readonly issuer: { name: string; kind: "Issuer" | "ClusterIssuer"; group: string };
  readonly caBundleSecretName: string;
  /** Keep CertificateRequests after they finish, for debugging. */
  readonly preserveRequests: boolean;
  /** From queueing to the issuer's answer. */
  readonly requestTimeoutMs: number;
  readonly maxInFlight: number;
  readonly maxQueued: number;
  readonly logger: Logger;
  /** This replica, on its requests' labels; the pod name in a cluster. */
  readonly instance?: string;
}

const USAGE_NAMES = {
  digitalSignature: "digital signature",
  keyEncipherment: "key encipherment",
  serverAuth: "server auth",
  clientAuth: "client auth",
} as const;

/** cert-manager's usage names for a profile (DESIGN.md §3). */
export function usagesFor(profile: CertificateProfile): string[] {
  const { keyUsage, extKeyUsage } = PROFILE_USAGES[profile];
  return [...keyUsage, ...extKeyUsage].map((u) => USAGE_NAMES[u]);
}

/** A label value (≤ 63 characters of [A-Za-z0-9._-], alphanumeric at both ends) naming the identity. */
export function identityLabel(commonName: string): string {
  const cleaned = commonName.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 63);
  return cleaned.replace(/^[^A-Za-z0-9]+/, "").replace(/[^A-Za-z0-9]+$/, "");
}

export class CertManagerProvider implements CertificateProvider {
  readonly name = "cert-manager" as const;
  private readonly limiter: InFlightLimiter;
  private readonly instance: string;

  private constructor(
    private readonly options: CertManagerOptions,
    private readonly caBundle: CaBundleSecret,
    private readonly watch: CertificateRequestWatch,
  ) {
    this.limiter = new InFlightLimiter({
      maxInFlight: options.maxInFlight,
      maxQueued: options.maxQueued,
      // Half the budget at most in the queue, so a request that gets a slot still has time to sign.
      maxWaitMs: options.requestTimeoutMs / 2,
    });
    this.instance = options.instance ?? instanceName();
  }

  static async open(options: CertManagerOptions): Promise<CertManagerProvider> {
    const { client, namespace, issuer, logger } = options;
    const instance = options.instance ?? instanceName();
    try {
      await sweep(options, instance);
      await checkIssuer({ client, namespace, issuer, logger });
    } catch (error) {
      if (isMissingApi(error)) throw new IssuerCheckError(CERT_MANAGER_MISSING);
      throw error;
    }
    const caBundle = await CaBundleSecret.open({
      client,
      namespace,
      name: options.caBundleSecretName,
      logger,
    });
    let watch: CertificateRequestWatch;
    try {
      watch = await CertificateRequestWatch.open({
        client,
        namespace,
        labelSelector: ownLabelSelector(instance),
        logger,
      });
    } catch (error) {
      await caBundle.close();
      throw error;
    }
    logger.info(
      {
        event: "cert_manager.ready",
        issuer: `${issuer.kind}/${issuer.name} (${issuer.group})`,
        roots: caBundle.roots.length,
        maxInFlight: options.maxInFlight,
      },
      "cert-manager backend ready",
    );
    return new CertManagerProvider({ ...options, instance }, caBundle, watch);
  }

  async issue(request: IssueRequest): Promise<IssuedCertificate> {
    const { client, namespace, issuer, logger, preserveRequests, requestTimeoutMs } = this.options;
    const started = Date.now();
    const release = await this.limiter
      .acquire(request.signal, request.profile === "server")
      .catch((error: unknown) => {
        logger.warn(
          { event: "cert_manager.exhausted", identity: request.commonName, error: (error as Error).message },
          "cert-manager request refused by the in-flight bound",
        );
        throw error;
      });
    try {
      const outcome = await runCertificateRequest({
        client,
        watch: this.watch,
        namespace,
        object: this.requestObject(request),
        deadlineMs: Math.max(1_000, requestTimeoutMs - (Date.now() - started)),
        preserve: preserveRequests,
        ...(request.signal ? { signal: request.signal } : {}),
        onDeleteFailed: (name, error) =>
          logger.warn(
            { event: "cert_manager.delete_failed", request: name, error: (error as Error).message },
            "could not delete a finished CertificateRequest; the next start-up sweep will",
          ),
      });
      const checked = checkIssuedChain(outcome.certificatePem, request, this.caBundle.roots);
      return {
        chainPem: checked.chainPem,
        serialNumber: checked.leaf.serialNumber.toUpperCase().replace(/^(00)+(?=.)/, ""),
        notBefore: new Date(checked.leaf.validFrom),
        notAfter: new Date(checked.leaf.validTo),
      };
    } catch (error) {
      throw this.explain(error, request, `${issuer.kind}/${issuer.name}`);
    } finally {
      release();
    }
  }

  trustBundle(): TrustBundle {
    return this.caBundle.bundle;
  }

  onTrustBundleChange(listener: (bundle: TrustBundle) => void): () => void {
    return this.caBundle.onChange(listener);
  }

  async close(): Promise<void> {
    await Promise.all([this.caBundle.close(), this.watch.close()]);
  }

  private requestObject(request: IssueRequest): CertificateRequest {
    const { namespace, issuer } = this.options;
    return {
      metadata: {
        generateName: "osm-cert-",
        namespace,
        labels: {
          ...MANAGED_BY,
          [INSTANCE_LABEL]: identityLabel(this.instance),
          [IDENTITY_LABEL]: identityLabel(request.commonName),
          [PROFILE_LABEL]: request.profile,
        },
        annotations: { [COMMON_NAME_ANNOTATION]: request.commonName },
      },
      spec: {
        request: Buffer.from(request.csrPem).toString("base64"),
        issuerRef: { name: issuer.name, kind: issuer.kind, group: issuer.group },
        // Whole seconds: cert-manager and certificates both count in seconds.
        duration: formatDuration(Math.ceil(request.validityMs / 1000) * 1000),
        usages: usagesFor(request.profile),
        isCA: false,
      },
    };
  }

  /** Every failure becomes a ProviderError, and every refusal is logged with cert-manager's words. */
  private explain(error: unknown, request: IssueRequest, issuer: string): Error {
    const { logger } = this.options;
    if (error instanceof CertManagerRefusal) {
      logger.warn(
        {
          event: "cert_manager.refused",
          identity: request.commonName,
          request: error.requestName,
          issuer,
          condition: error.condition,
          reason: error.conditionReason,
          message: error.conditionMessage,
        },
        error.message,
      );
      return error;
    }
    if (error instanceof ProviderError) {
      logger.warn(
        { event: "cert_manager.failed", identity: request.commonName, issuer, reason: error.reason },
        error.message,
      );
      return error;
    }
    if (error instanceof ChainCheckError) {
      logger.error(
        { event: "cert_manager.bad_certificate", identity: request.commonName, issuer },
        error.message,
      );
      return new ProviderError(
        "internal",
        `${issuer} issued a certificate osm-cert will not hand out: ${error.message}`,
      );
    }
    if (error instanceof KubeApiError || error instanceof KubeConnectionError) {
      logger.warn(
        { event: "cert_manager.api_error", identity: request.commonName, error: error.message },
        "Kubernetes API error",
      );
      if (isMissingApi(error)) return new ProviderError("unavailable", CERT_MANAGER_MISSING);
      const status = error instanceof KubeApiError ? error.status : 0;
      return new ProviderError(status === 422 || status === 400 ? "invalid" : "unavailable", error.message);
    }
    return error instanceof Error ? error : new Error(String(error));
  }
}

/** This replica's requests: ours (managed-by) and made by this instance. */
export function ownLabelSelector(instance: string): string {
  return `${Object.entries(MANAGED_BY)
    .map(([k, v]) => `${k}=${v}`)
    .join(",")},${INSTANCE_LABEL}=${identityLabel(instance)}`;
}

function instanceName(): string {
  return process.env.POD_NAME ?? hostname();
}

/**
 * Deletes CertificateRequests an earlier life of this replica left (a crash between create and
 * delete), and anyone's that are older than any request can live: other replicas' in-flight
 * requests are younger and stay.
 */
async function sweep(options: CertManagerOptions, instance: string): Promise<void> {
  const { client, namespace, logger, preserveRequests, requestTimeoutMs } = options;
  if (preserveRequests) return;
  const list = await client.list(CERTIFICATE_REQUESTS, {
    namespace,
    labelSelector: Object.entries(MANAGED_BY)
      .map(([k, v]) => `${k}=${v}`)
      .join(","),
  });
  const cutoff = Date.now() - Math.max(2 * requestTimeoutMs, 60_000);
  const stale = list.items.filter((cr) => {
    const ours = cr.metadata?.labels?.[INSTANCE_LABEL] === identityLabel(instance);
    const created = Date.parse(cr.metadata?.creationTimestamp ?? "");
    return ours || (Number.isFinite(created) && created < cutoff);
  });
  for (const cr of stale) {
    await client
      .delete(CERTIFICATE_REQUESTS, cr.metadata?.name as string, { namespace })
      .catch((error: unknown) => {
        if (!(error instanceof KubeApiError && error.status === 404)) throw error;
      });
  }
  if (stale.length > 0) {
    logger.info(
      { event: "cert_manager.swept", deleted: stale.length, kept: list.items.length - stale.length },
      "deleted CertificateRequests left over from an earlier run",
    );
  }
}
