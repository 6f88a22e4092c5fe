// Keeps the agent's certificate fresh: a new key and CSR for every certificate, renewal at a
// fraction of the lifetime (with jitter, so a fleet started together does not renew together), and
// capped exponential backoff while the server is unreachable. The current certificate keeps being
// served until it expires; an expired one is never served (SecretCache.validCertificate).

import { type KeyObject, X509Certificate } from "node:crypto";
import { identityName, type ServiceIdentity, serviceCommonName, spiffeId } from "../common/identity.js";
import { generateKeyPair, type KeyAlgorithm, privateKeyToPem } from "../common/keys.js";
import { backoffDelay } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import type { MetricsRegistry } from "../common/metrics.js";
import { decodeCertificates, encodePem } from "../common/pem.js";
import type { MutableCertificateProvider } from "../common/tls-material.js";
import { readCertificateNames } from "../common/x509/certificate-names.js";
import { createCsr } from "../common/x509/csr.js";
import type { CreateCertificateResponse } from "../proto/signing-api.js";
import type { SecretCache, WorkloadCertificate } from "./secret-cache.js";
import { SignerError } from "./signer-client.js";
import type { AgentTrust } from "./trust.js";

/** The slice of SignerClient the rotator needs. */
export interface CertificateSigner {
  createCertificate(
    csrPem: string,
    validityMs: number,
    timeoutMs: number,
  ): Promise<CreateCertificateResponse>;
  /** The client TLS identity just changed: later calls must go over a connection presenting it. */
  useCurrentIdentity?(): void;
}

export interface RotatorOptions {
  readonly identity: ServiceIdentity;
  readonly trustDomain: string;
  readonly keyAlgorithm: KeyAlgorithm;
  readonly validityMs: number;
  /** Renew when this fraction of the lifetime has passed (0 < f < 1). */
  readonly rotationFraction: number;
  readonly signer: CertificateSigner;
  readonly cache: SecretCache;
  /** The roots every returned chain must lead to; a bundle in an answer updates them first. */
  readonly trust: AgentTrust;
  /** Client TLS identity: switched to each new service cert so renewals authenticate with it. */
  readonly tls: MutableCertificateProvider;
  /**
   * The xDS bootstrap cert and key (PEM), used whenever no valid service cert exists. Null when
   * the agent authenticates with a ServiceAccount token instead, and presents no client cert.
   */
  readonly bootstrap: { readonly certPem: string; readonly keyPem: string } | null;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly requestTimeoutMs?: number;
  readonly backoff?: { readonly baseMs: number; readonly capMs: number };
  readonly random?: () => number;
}

export interface RotatorStatus {
  readonly nextAttempt: Date | null;
  readonly consecutiveFailures: number;
  readonly lastError: string | null;
  readonly lastSuccess: Date | null;
}

const JITTER_FRACTION = 0.1;
/** A retry hint is spread over at least this much more, however short the hint. */
const MIN_PUSHBACK_JITTER_MS = 1_000;

export class Rotator {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private failures = 0;
  /** Failures since the last success or server retry hint: the exponent of the backoff. */
  private backoffAttempts = 0;
  private lastError: string | null = null;
  private lastSuccess: Date | null = null;
  private nextAttempt: Date | null = null;
  private usingServiceCert = false;
  /** When the served certificate arrived (local clock); renew-now orders compare against it. */
  private obtainedAt: Date | null = null;
  /** Renew-now orders already acted on, by their `before` time: each is honoured at most once. */
  private handledOrder: number | null = null;
  private readonly spiffe: string;
  private readonly commonName: string;
  private readonly attempts;
  private readonly expiry;

  constructor(private readonly options: RotatorOptions) {
    this.spiffe = spiffeId(options.identity, options.trustDomain);
    this.commonName = serviceCommonName(options.identity, options.trustDomain);
    this.attempts = options.metrics
      .counter("osm_cert_agent_rotations_total", "Certificate requests by result.")
      .zero({ result: "success" })
      .zero({ result: "failure" });
    this.expiry = options.metrics
      .gauge("osm_cert_agent_cert_expiry_timestamp_seconds", "notAfter of the served certificate.")
      .zero();
    if (options.bootstrap !== null)
      options.tls.setIdentity(options.bootstrap.certPem, options.bootstrap.keyPem);
  }

  start(): void {
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  status(): RotatorStatus {
    return {
      nextAttempt: this.nextAttempt,
      consecutiveFailures: this.failures,
      lastError: this.lastError,
      lastSuccess: this.lastSuccess,
    };
  }

  /** One certificate request; exposed so tests and the demo can rotate on demand. */
  async rotateNow(): Promise<WorkloadCertificate> {
    const { privateKey } = await generateKeyPair(this.options.keyAlgorithm);
    const csr = createCsr({
      privateKey,
      commonName: this.commonName,
      dnsNames: [this.commonName],
      uris: [this.spiffe],
    });
    const response = await this.options.signer.createCertificate(
      encodePem("CERTIFICATE REQUEST", csr),
      this.options.validityMs,
      this.options.requestTimeoutMs ?? 15_000,
    );
    // The chain is checked against the roots this agent already holds, never against anything in
    // the answer; only then is the answer's bundle adopted: it came over the channel whose server
    // proved the signing server's identity, like a bundle on WatchTrustBundle. (A new root reaches
    // agents through the bundle first, before anything is signed with it: root rotation's order.)
    const certificate = this.accept(response, privateKey);
    const bundle = response.trust_bundle?.root_certificates.join("") ?? "";
    if (bundle !== "") {
      try {
        this.options.trust.adopt(bundle);
      } catch (error) {
        this.options.logger.error(
          { event: "trust_bundle.rejected", error: (error as Error).message },
          "ignoring an unusable trust bundle in the signing answer",
        );
      }
    }
    // The new identity and connection first: publishing the certificate starts the trust bundle
    // watch on the first one, which must not go out on the connection about to be replaced.
    if (this.options.bootstrap !== null) {
      this.options.tls.setIdentity(certificate.certChainPem, certificate.privateKeyPem);
      this.options.signer.useCurrentIdentity?.();
      this.usingServiceCert = true;
    }
    this.options.cache.setCertificate(certificate);
    this.obtainedAt = new Date();
    return certificate;
  }

  /**
   * Renew-now (issue 9): a certificate obtained before `before` is renewed after a random delay in
   * [0, windowMs), so a fleet told at once does not reach the signer at once. An order is acted on
   * at most once, so a clock behind the server's cannot make it renew in a loop.
   */
  requestRenewal(before: Date, windowMs: number): void {
    if (this.stopped || this.handledOrder === before.getTime()) return;
    this.handledOrder = before.getTime();
    if (this.obtainedAt === null || this.obtainedAt.getTime() >= before.getTime()) return;
    const random = this.options.random ?? Math.random;
    const delay = Math.floor(random() * Math.max(0, windowMs));
    const scheduled =
      this.nextAttempt === null ? Number.POSITIVE_INFINITY : this.nextAttempt.getTime() - Date.now();
    this.options.logger.info(
      {
        event: "certificate.renew_requested",
        identity: identityName(this.options.identity),
        before: before.toISOString(),
        renewInMs: Math.min(delay, scheduled),
      },
      "the signing server asked for a renewal",
    );
    if (delay < scheduled) this.schedule(delay);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.nextAttempt = new Date(Date.now() + delayMs);
    this.timer = setTimeout(() => void this.attempt(), delayMs);
  }

  private async attempt(): Promise<void> {
    try {
      const cert = await this.rotateNow();
      if (this.stopped) return;
      this.failures = 0;
      this.backoffAttempts = 0;
      this.lastError = null;
      this.lastSuccess = new Date();
      this.attempts.inc({ result: "success" });
      this.expiry.set(cert.notAfter.getTime() / 1000);
      const delay = this.renewalDelay(cert);
      this.options.logger.info(
        {
          event: "certificate.rotated",
          identity: identityName(this.options.identity),
          serial: cert.serialNumber,
          notAfter: cert.notAfter.toISOString(),
          nextRotation: new Date(Date.now() + delay).toISOString(),
        },
        "certificate issued",
      );
      this.schedule(delay);
    } catch (error) {
      if (this.stopped) return;
      this.failures += 1;
      this.lastError = error instanceof Error ? error.message : String(error);
      this.attempts.inc({ result: "failure" });
      this.fallBackToBootstrapIfExpired();
      const pushback = error instanceof SignerError ? error.retryAfterMs : null;
      let delay: number;
      if (pushback !== null) {
        // The server said when it has room: wait that long plus up to as long again, so a fleet
        // refused together comes back spread out. Not a failure to back off from: the next
        // refusal's hint decides again.
        delay =
          pushback + (this.options.random ?? Math.random)() * Math.max(pushback, MIN_PUSHBACK_JITTER_MS);
        this.backoffAttempts = 0;
      } else {
        const { baseMs, capMs } = this.options.backoff ?? { baseMs: 1_000, capMs: 30_000 };
        delay = backoffDelay(this.backoffAttempts++, baseMs, capMs, this.options.random);
      }
      const status = error instanceof SignerError ? error.status : "INTERNAL";
      const served = this.options.cache.validCertificate();
      this.options.logger.warn(
        {
          event: "certificate.request_failed",
          status,
          error: this.lastError,
          attempt: this.failures,
          retryInMs: Math.round(delay),
          retryAfterMs: pushback ?? undefined,
          servingUntil: served?.notAfter.toISOString() ?? null,
        },
        served === null
          ? "no certificate yet; retrying"
          : "renewal failed; still serving the current certificate",
      );
      this.schedule(delay);
    }
  }

  /** Renew at `rotationFraction` of the remaining lifetime as seen from here, minus up to 10 % jitter. */
  private renewalDelay(cert: WorkloadCertificate): number {
    const remaining = cert.notAfter.getTime() - Date.now();
    const random = this.options.random ?? Math.random;
    const base = remaining * this.options.rotationFraction;
    return Math.max(0, base - random() * JITTER_FRACTION * base);
  }

  /** An expired service cert cannot authenticate a renewal; the bootstrap cert still can. */
  private fallBackToBootstrapIfExpired(): void {
    if (
      this.options.bootstrap !== null &&
      this.usingServiceCert &&
      this.options.cache.validCertificate() === null
    ) {
      this.options.tls.setIdentity(this.options.bootstrap.certPem, this.options.bootstrap.keyPem);
      this.options.signer.useCurrentIdentity?.();
      this.usingServiceCert = false;
    }
  }

  /** Everything from the network is checked before it is served to Envoy. */
  private accept(response: CreateCertificateResponse, privateKey: KeyObject): WorkloadCertificate {
    const chainPem = response.certificate_chain.join("");
    let chain: X509Certificate[];
    try {
      chain = decodeCertificates(chainPem).map((der) => new X509Certificate(der));
    } catch (error) {
      throw new SignerError(
        "INTERNAL",
        `server returned an unreadable certificate chain: ${(error as Error).message}`,
      );
    }
    const leaf = chain[0];
    if (leaf === undefined) throw new SignerError("INTERNAL", "server returned an empty certificate chain");
    if (!leaf.checkPrivateKey(privateKey))
      throw new SignerError("INTERNAL", "server returned a certificate for another key");
    let uris: readonly string[];
    try {
      uris = readCertificateNames(leaf.raw).san.uris;
    } catch (error) {
      throw new SignerError(
        "INTERNAL",
        `server returned an unreadable certificate: ${(error as Error).message}`,
      );
    }
    if (uris.length !== 1 || uris[0] !== this.spiffe) {
      throw new SignerError("INTERNAL", `server returned a certificate without our SPIFFE ID ${this.spiffe}`);
    }
    const notBefore = new Date(leaf.validFrom);
    const notAfter = new Date(leaf.validTo);
    if (notAfter.getTime() <= Date.now())
      throw new SignerError("INTERNAL", "server returned an expired certificate");
    if (!this.options.trust.verifies(chain)) {
      throw new SignerError(
        "INTERNAL",
        "server returned a certificate that does not chain to the mesh roots this agent holds",
      );
    }
    return {
      certChainPem: chainPem,
      privateKeyPem: privateKeyToPem(privateKey),
      serialNumber: leaf.serialNumber,
      notBefore,
      notAfter,
    };
  }
}
