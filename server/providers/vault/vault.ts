// Vault: every CSR is signed by Vault's PKI secrets engine with `POST /v1/<mount>/sign/<role>`
// (never issue/: the key stays in the pod), and the root key never leaves Vault. The trust bundle
// is the root(s) of the mount's CA chain, re-read periodically and announced when it changes.
// Vault's refusals become ProviderErrors with Vault's own reason, and are logged with it.

import { createHash, X509Certificate } from "node:crypto";
import type { Logger } from "../../../common/logger.js";
import { decodeCertificates, encodePem } from "../../../common/pem.js";
import {
  type CertificateProvider,
  type IssuedCertificate,
  type IssueRequest,
  ProviderError,
  type TrustBundle,
} from "../provider.js";
import { checkSignAnswer, isSelfSigned, VaultAnswerError } from "./answer.js";
import { isTransient, VaultApiError, type VaultClient, VaultConnectionError } from "./client.js";
import { VaultTokenError, type VaultTokenManager } from "./token.js";

export interface VaultProviderOptions {
  readonly client: VaultClient;
  readonly tokens: VaultTokenManager;
  /** PKI mount path, e.g. "pki". */
  readonly mount: string;
  readonly role: string;
  readonly logger: Logger;
  /** How often the CA chain is re-read. */
  readonly refreshIntervalMs?: number;
  /** A root that left Vault's chain stays trusted this long, so leaves it signed keep working. */
  readonly retainDroppedRootsMs?: number;
}

export class VaultStartupError extends Error {
  readonly code = "ERR_OSM_CERT_VAULT_STARTUP";
}

interface RootEntry {
  readonly pem: string;
  readonly fingerprint: string;
  readonly notAfter: number;
  droppedAt?: number;
}

export class VaultProvider implements CertificateProvider {
  readonly name = "vault" as const;
  private readonly signPath: string;
  private readonly roots = new Map<string, RootEntry>();
  private bundle: TrustBundle = { roots: [], version: "" };
  private readonly listeners = new Set<(bundle: TrustBundle) => void>();
  private refreshTimer: NodeJS.Timeout | undefined;

  private constructor(private readonly options: VaultProviderOptions) {
    this.signPath = `${options.mount}/sign/${options.role}`;
  }

  /**
   * Looks the token up, checks that it may sign, and reads the CA chain. Anything that would make
   * every issuance fail stops start-up here with the reason.
   */
  static async open(options: VaultProviderOptions): Promise<VaultProvider> {
    const provider = new VaultProvider(options);
    const where = `Vault at ${options.client.address}`;
    try {
      await options.tokens.start();
      await provider.checkCapabilities();
      await provider.refreshBundle();
    } catch (error) {
      options.tokens.close();
      if (error instanceof VaultTokenError || error instanceof VaultStartupError) {
        throw new VaultStartupError(`${where}: ${error.message}`);
      }
      if (error instanceof VaultApiError || error instanceof VaultConnectionError) {
        throw new VaultStartupError(`${where}: ${error.message}`);
      }
      throw error;
    }
    const interval = options.refreshIntervalMs ?? 60_000;
    provider.refreshTimer = setInterval(() => {
      provider
        .refreshBundle()
        .catch((error: unknown) =>
          options.logger.warn(
            { event: "vault.trust_bundle.refresh_failed", error: (error as Error).message },
            "could not re-read Vault's CA chain; keeping the current trust bundle",
          ),
        );
    }, interval);
    provider.refreshTimer.unref();
    return provider;
  }

  async issue(request: IssueRequest): Promise<IssuedCertificate> {
    const body: Record<string, unknown> = {
      csr: request.csrPem,
      common_name: request.commonName,
      alt_names: request.dnsNames.join(","),
      uri_sans: request.uris.join(","),
      ip_sans: request.ipAddresses.join(","),
      // Whole seconds; Vault clamps to the role's max_ttl and says so in a warning.
      ttl: `${Math.max(1, Math.ceil(request.validityMs / 1000))}s`,
      format: "pem",
      exclude_cn_from_sans: !request.dnsNames.includes(request.commonName),
    };
    let data: unknown;
    let warnings: unknown;
    try {
      const res = await this.signWithFreshToken(body, request.signal);
      data = res.json?.data;
      warnings = res.json?.warnings;
    } catch (error) {
      throw this.refusal(error);
    }
    let checked: ReturnType<typeof checkSignAnswer>;
    try {
      checked = checkSignAnswer(data, request);
      if (!this.trusts(checked.anchor)) {
        // The CA may have been rotated since the last refresh: look once more before refusing.
        await this.refreshBundle();
        if (!this.trusts(checked.anchor)) {
          throw new VaultAnswerError("the returned chain does not end at a root of Vault's CA chain");
        }
      }
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.options.logger.error(
        { event: "vault.bad_answer", path: this.signPath, error: message },
        "refused Vault's certificate",
      );
      throw new ProviderError("internal", `Vault's answer to ${this.signPath} was refused: ${message}`);
    }
    if (Array.isArray(warnings) && warnings.length > 0) {
      this.options.logger.info(
        { event: "vault.warnings", path: this.signPath, warnings },
        "Vault returned warnings with the certificate",
      );
    }
    const { leaf } = checked;
    return {
      chainPem: checked.chainPem,
      serialNumber: leaf.serialNumber.toUpperCase().replace(/^(00)+(?=.)/, ""),
      notBefore: new Date(leaf.validFrom),
      notAfter: new Date(leaf.validTo),
    };
  }

  trustBundle(): TrustBundle {
    return this.bundle;
  }

  onTrustBundleChange(listener: (bundle: TrustBundle) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    clearInterval(this.refreshTimer);
    this.options.tokens.close();
    this.listeners.clear();
    await this.options.client.close();
  }

  /** Re-reads the CA chain; announces a changed bundle. Exposed for tests and the refresh loop. */
  async refreshBundle(): Promise<void> {
    const res = await this.options.client.request({ method: "GET", path: `${this.options.mount}/ca_chain` });
    let certs: X509Certificate[];
    try {
      certs = decodeCertificates(res.text).map((der) => new X509Certificate(der));
    } catch (error) {
      throw new VaultStartupError(
        `${this.options.mount}/ca_chain is not a PEM chain: ${(error as Error).message}`,
      );
    }
    const now = Date.now();
    const current = certs.filter((c) => c.ca && isSelfSigned(c) && Date.parse(c.validTo) > now);
    if (current.length === 0) {
      throw new VaultStartupError(
        certs.length === 0
          ? `${this.options.mount}/ca_chain is empty: generate or import a CA for the mount first`
          : `${this.options.mount}/ca_chain ends without a valid self-signed root; import the intermediate with its full chain (vault write ${this.options.mount}/intermediate/set-signed certificate=@chain.pem)`,
      );
    }
    const retainMs = this.options.retainDroppedRootsMs ?? 7 * 86_400_000;
    const seen = new Set<string>();
    for (const cert of current) {
      seen.add(cert.fingerprint256);
      const entry = this.roots.get(cert.fingerprint256);
      if (entry === undefined) {
        this.roots.set(cert.fingerprint256, {
          pem: encodePem("CERTIFICATE", cert.raw),
          fingerprint: cert.fingerprint256,
          notAfter: Date.parse(cert.validTo),
        });
      } else delete entry.droppedAt;
    }
    for (const [fingerprint, entry] of this.roots) {
      if (seen.has(fingerprint)) continue;
      entry.droppedAt ??= now;
      if (now - entry.droppedAt >= retainMs || entry.notAfter <= now) this.roots.delete(fingerprint);
    }
    const ordered = [...this.roots.values()].sort((a, b) =>
      a.droppedAt === undefined && b.droppedAt !== undefined ? -1 : a.fingerprint < b.fingerprint ? -1 : 1,
    );
    const version = createHash("sha256")
      .update(ordered.map((r) => r.fingerprint).join(","))
      .digest("hex")
      .slice(0, 16);
    if (version === this.bundle.version) return;
    const previous = this.bundle.version;
    this.bundle = { roots: ordered.map((r) => r.pem), version };
    if (previous !== "") {
      this.options.logger.info(
        { event: "vault.trust_bundle.changed", version, previous, roots: ordered.length },
        "Vault's CA chain changed; announcing the new trust bundle",
      );
      for (const listener of [...this.listeners]) listener(this.bundle);
    }
  }

  private trusts(anchor: X509Certificate): boolean {
    return [...this.roots.values()].some((r) => {
      const root = new X509Certificate(r.pem);
      return (
        root.fingerprint256 === anchor.fingerprint256 ||
        (anchor.checkIssued(root) && anchor.verify(root.publicKey))
      );
    });
  }

  private async checkCapabilities(): Promise<void> {
    const { client, tokens } = this.options;
    let caps: string[];
    try {
      const res = await client.request({
        method: "POST",
        path: "sys/capabilities-self",
        token: tokens.current(),
        body: { paths: [this.signPath] },
      });
      const json = res.json ?? {};
      const found = (json[this.signPath] ??
        (json.data as Record<string, unknown> | undefined)?.[this.signPath]) as unknown;
      caps = Array.isArray(found) ? found.map(String) : [];
    } catch (error) {
      if (error instanceof VaultApiError && error.status === 403) {
        // Without the default policy the token cannot ask; the first signing will tell.
        this.options.logger.warn(
          { event: "vault.capabilities_unknown", path: this.signPath },
          "cannot check the token's capabilities (sys/capabilities-self denied)",
        );
        return;
      }
      throw error;
    }
    if (!caps.includes("update") && !caps.includes("root")) {
      throw new VaultStartupError(
        `the token (policies ${JSON.stringify(tokens.lastInfo?.policies ?? [])}) lacks "update" on ${this.signPath} (capabilities: ${caps.join(", ") || "none"}); grant it with a policy: path "${this.signPath}" { capabilities = ["update"] }`,
      );
    }
  }

  private async signWithFreshToken(body: Record<string, unknown>, signal: AbortSignal | undefined) {
    const send = () =>
      this.options.client.request({
        method: "POST",
        path: this.signPath,
        token: this.options.tokens.current(),
        body,
        ...(signal ? { signal } : {}),
      });
    try {
      return await send();
    } catch (error) {
      // An expired token looks like any denial; a login or Secret source may have a fresh one.
      if (
        error instanceof VaultApiError &&
        error.status === 403 &&
        (await this.options.tokens.refreshAfterDenial())
      ) {
        return send();
      }
      throw error;
    }
  }

  private refusal(error: unknown): ProviderError {
    const { logger } = this.options;
    if (error instanceof VaultApiError) {
      const fields = { event: "vault.refused", path: error.path, status: error.status, errors: error.errors };
      if (error.status === 403) {
        logger.warn(fields, "Vault denied the signing request");
        return new ProviderError(
          "denied",
          `Vault denied POST /v1/${error.path} (${error.reason}): the token's policies must grant "update" on ${error.path}`,
        );
      }
      if (error.status === 400) {
        logger.warn(fields, "Vault's role refused the signing request");
        return new ProviderError(
          "precondition",
          `Vault role "${this.options.role}" refused: ${error.reason}`,
        );
      }
      if (isTransient(error)) {
        logger.warn(fields, "Vault is unavailable");
        return new ProviderError(
          "unavailable",
          `Vault is unavailable (HTTP ${error.status}: ${error.reason}); retry later`,
        );
      }
      logger.error(fields, "Vault failed the signing request");
      return new ProviderError(
        "precondition",
        `Vault answered HTTP ${error.status} for POST /v1/${error.path}: ${error.reason}`,
      );
    }
    if (error instanceof VaultConnectionError) {
      logger.warn(
        { event: "vault.unreachable", path: error.path, error: error.message },
        "Vault is unreachable",
      );
      return new ProviderError("unavailable", `Vault is unreachable: ${error.message}; retry later`);
    }
    if (error instanceof Error && error.name === "AbortError") {
      return new ProviderError("unavailable", "the signing request was cancelled");
    }
    logger.error({ err: error }, "unexpected failure talking to Vault");
    return new ProviderError("internal", "unexpected failure talking to Vault; see the server log");
  }
}
