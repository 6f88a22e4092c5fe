// An Envoy-like SDS client for fault tests and the soak: it holds one StreamSecrets stream for
// `default`, ACKs every response as Envoy does, reopens the stream (with a short backoff) when the
// agent goes away, and checks every certificate it is handed at the moment it arrives: it must be
// valid now (notBefore ≤ now < notAfter), its key must match, and it must arrive while the one it
// replaces is still valid (no gap). Broken promises are collected, not thrown, so a test or the
// soak can report all of them.

import { createPrivateKey, X509Certificate } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { connectSds, decodeSecrets, type SdsResponse, SdsStream } from "./envoy-sds-client.js";

export interface HeldCertificate {
  readonly receivedAt: number;
  readonly serial: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

export interface CheckingEnvoyOptions {
  readonly socket: string;
  /** Milliseconds added to this process's clock to get the agent's (clock-skew tests). */
  readonly clockOffsetMs?: number;
  /** Resource names to request; `default` (the certificate) must be among them. */
  readonly names?: readonly string[];
}

export class CheckingEnvoy {
  readonly held: HeldCertificate[] = [];
  /** Promises broken: an expired / not-yet-valid certificate, a wrong key, a gap. */
  readonly violations: string[] = [];
  /** How many times the stream ended and was reopened. */
  reconnects = 0;
  private client;
  private stopped = false;
  private readonly running: Promise<void>;

  constructor(private readonly options: CheckingEnvoyOptions) {
    this.client = connectSds(options.socket);
    this.running = this.run();
  }

  /** The certificate held now (the last one received), if any. */
  get current(): HeldCertificate | undefined {
    return this.held.at(-1);
  }

  /** Gaps: a certificate that arrived after the one before had expired (a subset of violations). */
  get gaps(): number {
    return this.violations.filter((v) => v.startsWith("gap")).length;
  }

  /** Expired or not-yet-valid certificates handed over (a subset of violations). */
  get invalidServed(): number {
    return this.violations.filter((v) => v.startsWith("invalid")).length;
  }

  /** Waits until a certificate other than `serials` arrives; false on timeout. */
  async waitForNew(serials: ReadonlySet<string>, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.held.some((h) => !serials.has(h.serial))) return true;
      await sleep(50);
    }
    return false;
  }

  async close(): Promise<void> {
    this.stopped = true;
    this.stream?.end();
    this.client.close();
    await this.running;
  }

  private stream: SdsStream | undefined;

  private async run(): Promise<void> {
    const names = [...(this.options.names ?? ["default"])];
    while (!this.stopped) {
      const stream = new SdsStream(this.client);
      this.stream = stream;
      stream.request(names);
      let seen = 0;
      try {
        while (!this.stopped) {
          const response = await stream.next(seen, 250);
          if (response === null) continue;
          seen++;
          this.check(response);
          stream.request(names, { version: response.version_info, nonce: response.nonce });
        }
      } catch {
        // The agent went away (or restarted): Envoy retries the SDS cluster with a backoff.
        if (this.stopped) break;
        this.reconnects++;
        stream.end();
        await sleep(200);
        // A fresh channel, as Envoy's new connection after the old one failed.
        this.client.close();
        this.client = connectSds(this.options.socket);
      }
    }
  }

  private check(response: SdsResponse): void {
    const now = Date.now() + (this.options.clockOffsetMs ?? 0);
    for (const secret of decodeSecrets(response)) {
      if (secret.certificateChain === undefined) continue;
      const cert = new X509Certificate(secret.certificateChain);
      const held: HeldCertificate = {
        receivedAt: now,
        serial: cert.serialNumber,
        notBefore: Date.parse(cert.validFrom),
        notAfter: Date.parse(cert.validTo),
      };
      if (now < held.notBefore || now >= held.notAfter) {
        this.violations.push(
          `invalid: ${held.serial} handed over at ${new Date(now).toISOString()}, valid ${cert.validFrom} – ${cert.validTo}`,
        );
      }
      if (secret.privateKey === undefined || !cert.checkPrivateKey(createPrivateKey(secret.privateKey))) {
        this.violations.push(`key: ${held.serial} came with a key that does not match it`);
      }
      const previous = this.current;
      if (previous !== undefined && previous.serial !== held.serial && now >= previous.notAfter) {
        this.violations.push(
          `gap: ${held.serial} arrived ${now - previous.notAfter} ms after ${previous.serial} expired`,
        );
      }
      this.held.push(held);
    }
  }
}
