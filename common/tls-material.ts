// TLS material that changes while a process runs (the agent's client cert after each rotation, the
// server's CA set after a root change), exposed through grpc-js's certificate-provider interface so
// existing servers and channels pick up new material without being rebuilt.

import type { experimental } from "@grpc/grpc-js";

type CaListener = experimental.CaCertificateUpdateListener;
type IdentityListener = experimental.IdentityCertificateUpdateListener;

export class MutableCertificateProvider implements experimental.CertificateProvider {
  private ca: experimental.CaCertificateUpdate | null = null;
  private identity: experimental.IdentityCertificateUpdate | null = null;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();

  /** PEM of every trusted root. */
  setCaCertificates(pem: string): void {
    this.ca = { caCertificate: Buffer.from(pem) };
    for (const listener of this.caListeners) listener(this.ca);
  }

  /** PEM chain (leaf first) and its PEM private key. */
  setIdentity(certChainPem: string, privateKeyPem: string): void {
    this.identity = { certificate: Buffer.from(certChainPem), privateKey: Buffer.from(privateKeyPem) };
    for (const listener of this.identityListeners) listener(this.identity);
  }

  // The current material is delivered on the next tick, not synchronously: grpc-js registers its
  // own watcher only after adding these listeners, and would miss a synchronous first update
  // (its server then drops every connection as "credentials not loaded").
  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    process.nextTick(() => {
      if (this.ca !== null && this.caListeners.has(listener)) listener(this.ca);
    });
  }
  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }
  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    process.nextTick(() => {
      if (this.identity !== null && this.identityListeners.has(listener)) listener(this.identity);
    });
  }
  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }
}
