// The contract every signing backend implements (after OSM's certificate.Manager): issue a
// certificate for an identity the server has already authorised, publish the trust bundle and
// announce its changes. Each backend lives in its own folder and touches no other.

import type { ParsedCsr } from "../../common/x509/csr.js";

export type ProviderName = "tresor" | "vault" | "cert-manager";

/** What a certificate is for; decides key usages and extended key usages (DESIGN.md §3). */
export type CertificateProfile = "service" | "bootstrap" | "webhook" | "server";

export interface IssueRequest {
  /** The CSR as received, for backends that forward it (Vault, cert-manager). */
  readonly csrPem: string;
  /** The same CSR, parsed and signature-checked; its public key is what gets certified. */
  readonly csr: ParsedCsr;
  readonly profile: CertificateProfile;
  /** Names decided by the server from the caller's credential, never taken from the CSR. */
  readonly commonName: string;
  readonly dnsNames: readonly string[];
  readonly uris: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly validityMs: number;
  readonly signal?: AbortSignal;
}

export interface IssuedCertificate {
  /** PEM, leaf first, intermediates after; never the root. */
  readonly chainPem: readonly string[];
  /** Upper-case hex. */
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface TrustBundle {
  /** PEM, one root per entry. */
  readonly roots: readonly string[];
  /** Equal versions mean equal bundles. */
  readonly version: string;
}

/** An order to agents: renew a certificate obtained before `before`, each after a random delay within `windowMs`. */
export interface RenewOrder {
  readonly before: Date;
  readonly windowMs: number;
}

export type ProviderErrorReason =
  | "unavailable"
  | "denied"
  | "invalid"
  /** The backend's own configuration refuses the request (e.g. a Vault role constraint). */
  | "precondition"
  | "internal"
  /** Too many requests in flight to the backend; the message says when to retry. */
  | "exhausted"
  /** The backend did not answer within its deadline. */
  | "deadline";

/** A backend failure with a reason the API maps to a status code and a message a human can act on. */
export class ProviderError extends Error {
  readonly code = "ERR_OSM_CERT_PROVIDER";
  constructor(
    readonly reason: ProviderErrorReason,
    message: string,
    /** For "exhausted": when the backend expects room again (sent to the caller as a retry hint). */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

export interface CertificateProvider {
  readonly name: ProviderName;
  issue(request: IssueRequest): Promise<IssuedCertificate>;
  trustBundle(): TrustBundle;
  /** Called on every trust bundle change; returns the unsubscribe function. */
  onTrustBundleChange(listener: (bundle: TrustBundle) => void): () => void;
  close(): Promise<void>;
  // Root rotation (issue 9); optional, so backends without it need nothing.
  /** Called when the root that signs new leaves changes; returns the unsubscribe function. */
  onSigningRootChange?(listener: () => void): () => void;
  /** The renew-now order in force, sent to agents with the bundle; announced via onTrustBundleChange. */
  renewOrder?(): RenewOrder | null;
  /** For status pages: the signing root's SHA-256 and the rotation phase (null outside a rotation). */
  rotationStatus?(): { signingFingerprint: string; phase: string | null };
}
