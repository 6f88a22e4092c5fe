// The webhook's serving certificate (DESIGN.md §3, kind "webhook"): CN <svc>.<ns>.svc, the two DNS
// names the API server may dial, a new key each time, held in memory only. Short-lived and renewed
// at two thirds of its lifetime (a failed renewal then has a third left to retry), and at once when
// the signing root changes (root rotation, issue 9), so a leaked key is worth little and nobody has
// to rotate it by hand.

import { X509Certificate } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { webhookCommonName } from "../common/identity.js";
import { generateKeyPair, privateKeyToPem } from "../common/keys.js";
import { backoffDelay } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import { encodePem } from "../common/pem.js";
import { createCsr, parseCsrDer } from "../common/x509/csr.js";
import type { CertificateProvider } from "../server/providers/provider.js";
import type { ServingIdentity } from "./https-server.js";

export interface IssuedServingCertificate extends ServingIdentity {
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** When we got it; notBefore is backdated for clock skew, so renewal counts from here. */
  readonly issuedAt: Date;
}

export function servingNames(service: string, namespace: string): { commonName: string; dnsNames: string[] } {
  const commonName = webhookCommonName(service, namespace);
  return { commonName, dnsNames: [commonName, `${commonName}.cluster.local`] };
}

export async function issueServingCertificate(
  provider: Pick<CertificateProvider, "issue">,
  names: { commonName: string; dnsNames: readonly string[] },
  validityMs: number,
): Promise<IssuedServingCertificate> {
  const issuedAt = new Date();
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const csrDer = createCsr({ privateKey, commonName: names.commonName, dnsNames: [...names.dnsNames] });
  const issued = await provider.issue({
    csrPem: encodePem("CERTIFICATE REQUEST", csrDer),
    csr: parseCsrDer(csrDer),
    profile: "webhook",
    commonName: names.commonName,
    dnsNames: names.dnsNames,
    uris: [],
    ipAddresses: [],
    validityMs,
  });
  return {
    certPem: issued.chainPem.join(""),
    keyPem: privateKeyToPem(privateKey),
    serialNumber: issued.serialNumber,
    notBefore: issued.notBefore,
    notAfter: issued.notAfter,
    issuedAt,
  };
}

export interface ServingCertRenewerOptions {
  readonly issue: () => Promise<IssuedServingCertificate>;
  readonly current: IssuedServingCertificate;
  readonly onRenewed: (next: IssuedServingCertificate) => void;
  readonly logger: Logger;
  /** Fraction of the lifetime after which to renew (default 2/3). */
  readonly renewFraction?: number;
  readonly retryBaseMs?: number;
  readonly retryCapMs?: number;
}

// setTimeout holds at most a signed 32-bit delay; longer waits are taken in steps.
const MAX_TIMER_MS = 2_147_483_647;

export const RENEW_AT_FRACTION = 2 / 3;

export class ServingCertRenewer {
  private current: IssuedServingCertificate;
  private wake: (() => void) | null = null;
  private renewSoon = false;

  constructor(private readonly options: ServingCertRenewerOptions) {
    this.current = options.current;
  }

  /** Renew now, whatever the lifetime says (the signing root changed: move under the new one). */
  renewNow(): void {
    this.renewSoon = true;
    this.wake?.();
  }

  /** Renews until the signal aborts; a failed renewal keeps the current certificate and retries. */
  async run(signal: AbortSignal): Promise<void> {
    const { logger } = this.options;
    const fraction = this.options.renewFraction ?? RENEW_AT_FRACTION;
    try {
      for (;;) {
        const { issuedAt, notAfter } = this.current;
        const start = issuedAt.getTime();
        // At least a second later: a certificate cut short (by the root's own expiry) must not spin.
        const renewAt = Math.max(start + (notAfter.getTime() - start) * fraction, Date.now() + 1_000);
        while (Date.now() < renewAt && !this.renewSoon) {
          const woken = new AbortController();
          this.wake = () => woken.abort();
          await sleep(Math.min(renewAt - Date.now(), MAX_TIMER_MS), undefined, {
            signal: AbortSignal.any([signal, woken.signal]),
          }).catch((error: unknown) => {
            if (signal.aborted) throw error;
          });
          this.wake = null;
        }
        this.renewSoon = false;
        for (let attempt = 0; ; attempt++) {
          try {
            this.current = await this.options.issue();
            break;
          } catch (error) {
            logger.error(
              { event: "serving_cert.renewal_failed", attempt, notAfter: notAfter.toISOString() },
              `renewing the webhook serving certificate failed: ${(error as Error).message}; keeping the current one`,
            );
            const delay = backoffDelay(
              attempt,
              this.options.retryBaseMs ?? 1_000,
              this.options.retryCapMs ?? 60_000,
            );
            await sleep(delay, undefined, { signal });
          }
        }
        this.options.onRenewed(this.current);
        logger.info(
          {
            event: "serving_cert.renewed",
            serial: this.current.serialNumber,
            notAfter: this.current.notAfter.toISOString(),
          },
          "renewed the webhook serving certificate",
        );
      }
    } catch (error) {
      if (!signal.aborted) throw error;
    }
  }
}

/** notAfter as Prometheus wants it, read from the certificate itself. */
export function expirySeconds(certPem: string): number {
  return Date.parse(new X509Certificate(certPem).validTo) / 1000;
}
