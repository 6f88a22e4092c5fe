// Follows WatchTrustBundle: every new bundle goes to the cache (so Envoy gets ROOTCA at once) and to
// the TLS client (so the agent keeps trusting the server across a root rotation). A dropped stream
// is reopened with backoff; the last bundle stays in force meanwhile.

import { backoffDelay } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import { decodeCertificates } from "../common/pem.js";
import type { MutableCertificateProvider } from "../common/tls-material.js";
import type { TrustBundleMessage } from "../proto/signing-api.js";
import type { SecretCache } from "./secret-cache.js";
import type { SignerError } from "./signer-client.js";

export interface TrustBundleSource {
  watchTrustBundle(
    onBundle: (bundle: TrustBundleMessage) => void,
    onEnd: (error: SignerError) => void,
  ): () => void;
}

export class TrustBundleFollower {
  private cancel: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;

  constructor(
    private readonly options: {
      readonly source: TrustBundleSource;
      readonly cache: SecretCache;
      readonly tls: MutableCertificateProvider;
      readonly logger: Logger;
    },
  ) {}

  start(): void {
    if (this.stopped) return;
    this.cancel = this.options.source.watchTrustBundle(
      (bundle) => this.accept(bundle),
      (error) => {
        this.cancel = undefined;
        if (this.stopped) return;
        const delay = backoffDelay(this.failures++, 1_000, 30_000);
        this.options.logger.warn(
          {
            event: "trust_bundle.stream_ended",
            status: error.status,
            error: error.message,
            retryInMs: Math.round(delay),
          },
          "trust bundle stream ended; reconnecting",
        );
        this.timer = setTimeout(() => this.start(), delay);
      },
    );
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.cancel?.();
  }

  private accept(bundle: TrustBundleMessage): void {
    this.failures = 0;
    const pem = bundle.root_certificates.join("");
    try {
      if (decodeCertificates(pem).length === 0) throw new Error("no certificates");
    } catch (error) {
      this.options.logger.error(
        { event: "trust_bundle.rejected", error: (error as Error).message },
        "ignoring an unreadable trust bundle",
      );
      return;
    }
    if (pem === this.options.cache.snapshot().trustBundlePem) return;
    this.options.logger.info(
      { event: "trust_bundle.updated", version: bundle.version, roots: bundle.root_certificates.length },
      "trust bundle updated",
    );
    this.options.cache.setTrustBundle(pem);
    this.options.tls.setCaCertificates(pem);
  }
}
