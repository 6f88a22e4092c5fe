// The agent's single source of truth for what Envoy is served: the current workload certificate
// (with its in-memory key) and the mesh trust bundle. Every change bumps one version number and
// notifies all listeners synchronously, so every open SDS stream sees a rotation at once.

import { EventEmitter } from "node:events";

export interface WorkloadCertificate {
  /** Leaf first, PEM. */
  readonly certChainPem: string;
  /** PKCS#8 PEM of the key generated in this process. Lives in memory only. */
  readonly privateKeyPem: string;
  /** Upper-case hex, as OpenSSL prints it. */
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface SecretSnapshot {
  /** Increases on every change; 0 before anything is known. */
  readonly version: number;
  readonly certificate: WorkloadCertificate | null;
  /** PEM of every trusted root, concatenated. */
  readonly trustBundlePem: string | null;
}

export interface SecretCacheEvents {
  change: [SecretSnapshot];
}

export class SecretCache extends EventEmitter<SecretCacheEvents> {
  private current: SecretSnapshot = { version: 0, certificate: null, trustBundlePem: null };

  constructor() {
    super();
    // Every SDS stream listens; hundreds are normal (DESIGN.md §5).
    this.setMaxListeners(0);
  }

  snapshot(): SecretSnapshot {
    return this.current;
  }

  setCertificate(certificate: WorkloadCertificate): void {
    this.update({ ...this.current, certificate });
  }

  setTrustBundle(trustBundlePem: string): void {
    if (trustBundlePem === this.current.trustBundlePem) return;
    this.update({ ...this.current, trustBundlePem });
  }

  /** A certificate that is valid right now, or null: an expired one is never served. */
  validCertificate(now = Date.now()): WorkloadCertificate | null {
    const cert = this.current.certificate;
    if (cert === null) return null;
    return now >= cert.notBefore.getTime() && now < cert.notAfter.getTime() ? cert : null;
  }

  private update(next: Omit<SecretSnapshot, "version">): void {
    this.current = { ...next, version: this.current.version + 1 };
    this.emit("change", this.current);
  }
}
