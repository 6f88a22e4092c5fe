// An agent's Rotator for bookstore-v2 as the unit tests build it: its own SecretCache, trust in the
// given roots, hour-long certificates renewed at half-life, no bootstrap identity.

import { type CertificateSigner, Rotator, type RotatorOptions } from "../../agent/rotator.js";
import { SecretCache } from "../../agent/secret-cache.js";
import { AgentTrust } from "../../agent/trust.js";
import type { Logger } from "../../common/logger.js";
import { MetricsRegistry } from "../../common/metrics.js";
import { MutableCertificateProvider } from "../../common/tls-material.js";
import { BOOKSTORE_V2 } from "./signing-client.js";

export interface TestRotatorOptions {
  /** PEM roots the agent trusts at start. */
  readonly roots: string;
  readonly signer: CertificateSigner;
  readonly logger: Logger;
  /** The client TLS identity the signer dials with, when the signer needs it first. Default: a new one. */
  readonly tls?: MutableCertificateProvider;
  readonly backoff?: RotatorOptions["backoff"];
}

export function testRotator(options: TestRotatorOptions): { rotator: Rotator; cache: SecretCache } {
  const cache = new SecretCache();
  const tls = options.tls ?? new MutableCertificateProvider();
  const rotator = new Rotator({
    identity: BOOKSTORE_V2.identity,
    trustDomain: "cluster.local",
    keyAlgorithm: "ecdsa-p256",
    validityMs: 3_600_000,
    rotationFraction: 0.5,
    signer: options.signer,
    cache,
    trust: new AgentTrust(cache, tls, options.roots),
    tls,
    bootstrap: null,
    logger: options.logger,
    metrics: new MetricsRegistry(),
    ...(options.backoff ? { backoff: options.backoff } : {}),
  });
  return { rotator, cache };
}
