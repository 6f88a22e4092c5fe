// Follows WatchTrustBundle: every new bundle becomes the agent's trust (AgentTrust: Envoy's ROOTCA at
// once, and the TLS client, so the agent keeps trusting the server across a root rotation). The
// stream runs on the channel whose server proved the signing server's SPIFFE ID. A dropped stream
// is reopened with backoff; the last bundle stays in force meanwhile.

import { backoffDelay } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import { durationToMs, type TrustBundleMessage, timestampToDate } from "../proto/signing-api.js";
import type { SignerError } from "./signer-client.js";
import type { AgentTrust } from "./trust.js";

export interface TrustBundleSource {
  watchTrustBundle(
    onBundle: (bundle: TrustBundleMessage) => void,
    onEnd: (error: SignerError) => void,
  ): () => void;
  /** Says which bundle version this agent serves; absent or UNIMPLEMENTED on older servers. */
  reportTrustBundle?(version: string): Promise<void>;
}

/** A renew-now order from the server (issue 9): renew a certificate obtained before `before`. */
export interface RenewRequest {
  readonly before: Date;
  readonly windowMs: number;
}

export class TrustBundleFollower {
  private cancel: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private reporting = true;

  constructor(
    private readonly options: {
      readonly source: TrustBundleSource;
      readonly trust: AgentTrust;
      readonly logger: Logger;
      /** Told about every renew-now order that arrives with a bundle. */
      readonly onRenewRequest?: (request: RenewRequest) => void;
    },
  ) {}

  start(): void {
    if (this.stopped) return;
    this.cancel = this.options.source.watchTrustBundle(
      (bundle) => this.accept(bundle),
      (error) => {
        this.cancel = undefined;
        if (this.stopped) return;
        // A refusal with a retry hint (load limits) is waited out, spread by up to as long again.
        const hint = error.retryAfterMs ?? 0;
        const delay = Math.max(backoffDelay(this.failures++, 1_000, 30_000), hint + Math.random() * hint);
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
    let changed: boolean;
    try {
      changed = this.options.trust.adopt(bundle.root_certificates.join(""));
    } catch (error) {
      this.options.logger.error(
        { event: "trust_bundle.rejected", error: (error as Error).message },
        "ignoring an unusable trust bundle",
      );
      return;
    }
    if (changed) {
      this.options.logger.info(
        { event: "trust_bundle.updated", version: bundle.version, roots: bundle.root_certificates.length },
        "trust bundle updated",
      );
    }
    // Adopted (Envoy's ROOTCA already pushed): say so, so a root rotation can see who follows.
    this.report(bundle.version);
    const before = timestampToDate(bundle.renew_before ?? null);
    if (before !== null) {
      this.options.onRenewRequest?.({ before, windowMs: durationToMs(bundle.renew_window ?? null) });
    }
  }

  private report(version: string): void {
    const { source, logger } = this.options;
    if (!this.reporting || source.reportTrustBundle === undefined || version === "") return;
    source.reportTrustBundle(version).catch((error: SignerError) => {
      if (error.status === "UNIMPLEMENTED") {
        this.reporting = false;
        logger.info(
          { event: "trust_bundle.report_unsupported" },
          "the signing server does not take bundle reports",
        );
        return;
      }
      logger.warn(
        { event: "trust_bundle.report_failed", status: error.status, error: error.message },
        "could not report the served trust bundle; the next bundle reports again",
      );
    });
  }
}
