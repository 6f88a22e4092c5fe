// The signing server's own TLS identity: a short-lived leaf from the same provider that signs
// workloads, with a fresh key in memory each time, renewed well before it expires and installed in
// the running gRPC server without a restart. It carries the signing server's SPIFFE ID, which is
// what agents check (never a DNS name a workload could also hold), plus --server-san for other
// clients.

import { isIP } from "node:net";
import { signingServerSpiffeId } from "../common/identity.js";
import { generateKeyPair, privateKeyToPem } from "../common/keys.js";
import { backoffDelay } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import { encodePem } from "../common/pem.js";
import type { MutableCertificateProvider } from "../common/tls-material.js";
import { createCsr, parseCsrDer } from "../common/x509/csr.js";
import type { CertificateProvider, IssuedCertificate } from "./providers/provider.js";

/** Renew once this fraction of the lifetime has passed: a failed renewal then has a third left to retry. */
const RENEW_AT_FRACTION = 2 / 3;

export interface ServingCertificateOptions {
  readonly provider: CertificateProvider;
  readonly tls: MutableCertificateProvider;
  readonly trustDomain: string;
  /** DNS names and IP addresses (--server-san). */
  readonly sans: readonly string[];
  readonly validityMs: number;
  readonly logger: Logger;
}

export class ServingCertificate {
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private current: IssuedCertificate | null = null;

  constructor(private readonly options: ServingCertificateOptions) {}

  /** Issues the first certificate (start-up fails if it cannot) and schedules its renewals. */
  async start(): Promise<void> {
    await this.renew();
  }

  get notAfter(): Date | null {
    return this.current?.notAfter ?? null;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** Issues and installs a new certificate now; later renewals are scheduled from it. */
  async renew(): Promise<IssuedCertificate> {
    const issued = await this.issue();
    this.current = issued;
    this.failures = 0;
    const lifetime = issued.notAfter.getTime() - Date.now();
    this.schedule(Math.max(1_000, lifetime * RENEW_AT_FRACTION));
    this.options.logger.info(
      { event: "serving_cert.issued", serial: issued.serialNumber, notAfter: issued.notAfter.toISOString() },
      "issued the signing server's serving certificate",
    );
    return issued;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.renew().catch((error: unknown) => {
        const delay = backoffDelay(this.failures++, 1_000, 60_000);
        this.options.logger.error(
          {
            event: "serving_cert.renewal_failed",
            error: (error as Error).message,
            retryInMs: Math.round(delay),
            servingUntil: this.current?.notAfter.toISOString(),
          },
          "could not renew the signing server's serving certificate; retrying",
        );
        this.schedule(delay);
      });
    }, delayMs);
    this.timer.unref();
  }

  private async issue(): Promise<IssuedCertificate> {
    const { provider, tls, trustDomain, sans, validityMs } = this.options;
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const dnsNames = sans.filter((s) => isIP(s) === 0);
    const ipAddresses = sans.filter((s) => isIP(s) !== 0);
    const uris = [signingServerSpiffeId(trustDomain)];
    const commonName = dnsNames[0] ?? "osm-cert";
    // The CSR names everything the certificate will: backends that sign the CSR as sent (cert-manager) need the IPs in it.
    const csrDer = createCsr({ privateKey, commonName, dnsNames, uris, ipAddresses });
    const issued = await provider.issue({
      csrPem: encodePem("CERTIFICATE REQUEST", csrDer),
      csr: parseCsrDer(csrDer),
      profile: "server",
      commonName,
      dnsNames,
      uris,
      ipAddresses,
      validityMs,
    });
    tls.setIdentity(issued.chainPem.join(""), privateKeyToPem(privateKey));
    return issued;
  }
}
