// The Vault token and its lifecycle: where it comes from (a flag or VAULT_TOKEN, a Kubernetes
// Secret that is re-read so a rotated token is picked up, or a Kubernetes auth login with the
// server's own projected ServiceAccount token), a lookup-self at start with a message an operator
// can act on, renewal of renewable tokens before their TTL ends, and a fresh login when a token
// expires. The token itself is never logged.

import { readFile } from "node:fs/promises";
import type { Logger } from "../../../common/logger.js";
import { VaultApiError, type VaultClient } from "./client.js";

export type TokenSourceConfig =
  | { readonly kind: "static"; readonly token: string; readonly describe: string }
  /** Returns the Secret's current token; re-read every `pollMs`. */
  | {
      readonly kind: "secret";
      readonly read: () => Promise<string>;
      readonly describe: string;
      readonly pollMs: number;
    }
  | {
      readonly kind: "kubernetes";
      /** auth/<mount>/login. */
      readonly authMount: string;
      readonly role: string;
      readonly jwtFile: string;
    };

export interface TokenInfo {
  /** Seconds left at lookup or renewal; 0 = never expires. */
  readonly ttlSeconds: number;
  readonly renewable: boolean;
  readonly policies: readonly string[];
}

export class VaultTokenError extends Error {
  readonly code = "ERR_OSM_CERT_VAULT_TOKEN";
}

export interface VaultTokenManagerOptions {
  readonly client: VaultClient;
  readonly source: TokenSourceConfig;
  readonly logger: Logger;
  /** Renew when this fraction of the TTL has passed. */
  readonly renewFraction?: number;
}

export class VaultTokenManager {
  private token = "";
  private info: TokenInfo | null = null;
  private renewTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private refreshing: Promise<boolean> | null = null;
  private closed = false;

  constructor(private readonly options: VaultTokenManagerOptions) {}

  current(): string {
    return this.token;
  }

  get lastInfo(): TokenInfo | null {
    return this.info;
  }

  describe(): string {
    const { source } = this.options;
    return source.kind === "kubernetes"
      ? `Kubernetes auth login (auth/${source.authMount}/login, role "${source.role}")`
      : source.describe;
  }

  /** Obtains the token and looks it up; throws VaultTokenError with the reason it cannot be used. */
  async start(): Promise<TokenInfo> {
    this.token = await this.obtain();
    const info = await this.lookup();
    if (this.options.source.kind === "secret") this.pollSecret();
    return info;
  }

  /**
   * Called after Vault answered 403 with the current token: a login source logs in again, a Secret
   * source re-reads the Secret. Resolves true when a different token is now in use.
   */
  refreshAfterDenial(): Promise<boolean> {
    if (this.options.source.kind === "static" || this.closed) return Promise.resolve(false);
    this.refreshing ??= (async () => {
      try {
        const before = this.token;
        const next = await this.obtain();
        if (next === before) return false;
        this.token = next;
        await this.lookup();
        this.options.logger.info(
          { event: "vault.token.replaced", source: this.describe() },
          "using a new Vault token",
        );
        return true;
      } catch (error) {
        this.options.logger.error(
          { event: "vault.token.refresh_failed", error: (error as Error).message },
          "could not obtain a new Vault token",
        );
        return false;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.renewTimer);
    clearInterval(this.pollTimer);
  }

  private async obtain(): Promise<string> {
    const { source, client } = this.options;
    if (source.kind === "static") return source.token;
    if (source.kind === "secret") {
      const token = (await source.read()).trim();
      if (token === "") throw new VaultTokenError(`${source.describe} is empty`);
      return token;
    }
    let jwt: string;
    try {
      jwt = (await readFile(source.jwtFile, "utf8")).trim();
    } catch (error) {
      throw new VaultTokenError(
        `cannot read the ServiceAccount token for Vault's Kubernetes auth (--vault-auth-token-file ${source.jwtFile}): ${(error as Error).message}`,
      );
    }
    try {
      const res = await client.request({
        method: "POST",
        path: `auth/${source.authMount}/login`,
        body: { role: source.role, jwt },
      });
      const auth = res.json?.auth as { client_token?: unknown } | undefined;
      if (typeof auth?.client_token !== "string" || auth.client_token === "") {
        throw new VaultTokenError(`Vault's auth/${source.authMount}/login answer has no auth.client_token`);
      }
      return auth.client_token;
    } catch (error) {
      if (error instanceof VaultApiError) {
        throw new VaultTokenError(
          `Vault Kubernetes auth login refused (auth/${source.authMount}/login, role "${source.role}"): ${error.reason}`,
        );
      }
      throw error;
    }
  }

  private async lookup(): Promise<TokenInfo> {
    let data: Record<string, unknown>;
    try {
      const res = await this.options.client.request({
        method: "GET",
        path: "auth/token/lookup-self",
        token: this.token,
      });
      data = (res.json?.data ?? {}) as Record<string, unknown>;
    } catch (error) {
      if (error instanceof VaultApiError && error.status === 403) {
        throw new VaultTokenError(
          `Vault token from ${this.describe()} was refused by auth/token/lookup-self (${error.reason}): it is invalid, expired or revoked, or lacks the "default" policy`,
        );
      }
      throw error;
    }
    const info: TokenInfo = {
      ttlSeconds: typeof data.ttl === "number" ? data.ttl : 0,
      renewable: data.renewable === true,
      policies: Array.isArray(data.policies) ? data.policies.map(String) : [],
    };
    this.info = info;
    this.options.logger.info(
      {
        event: "vault.token.ready",
        source: this.describe(),
        ttlSeconds: info.ttlSeconds,
        renewable: info.renewable,
        policies: info.policies,
      },
      info.ttlSeconds === 0 ? "Vault token does not expire" : "Vault token looked up",
    );
    this.schedule(info);
    return info;
  }

  private schedule(info: TokenInfo): void {
    clearTimeout(this.renewTimer);
    if (this.closed || info.ttlSeconds === 0) return;
    const fraction = this.options.renewFraction ?? 2 / 3;
    const delay = Math.max(200, info.ttlSeconds * 1000 * fraction);
    this.renewTimer = setTimeout(() => void this.renewOrReplace(), delay);
    this.renewTimer.unref();
  }

  private async renewOrReplace(): Promise<void> {
    const { logger } = this.options;
    if (this.info?.renewable) {
      try {
        const res = await this.options.client.request({
          method: "POST",
          path: "auth/token/renew-self",
          token: this.token,
          body: {},
        });
        const auth = (res.json?.auth ?? {}) as { lease_duration?: unknown; renewable?: unknown };
        const ttl = typeof auth.lease_duration === "number" ? auth.lease_duration : 0;
        const info = { ...(this.info as TokenInfo), ttlSeconds: ttl, renewable: auth.renewable !== false };
        this.info = info;
        logger.info({ event: "vault.token.renewed", ttlSeconds: ttl }, "renewed the Vault token");
        // A renewal capped by the token's max TTL leaves less than asked: once it is short, replace it.
        if (ttl > 0 && (ttl >= 5 || this.options.source.kind === "static")) {
          this.schedule(info);
          return;
        }
      } catch (error) {
        logger.warn(
          { event: "vault.token.renew_failed", error: (error as Error).message },
          "could not renew the Vault token",
        );
      }
    }
    if (this.options.source.kind === "static") {
      logger.error(
        { event: "vault.token.expiring", source: this.describe() },
        "the Vault token will expire and cannot be renewed; signing will fail until a new token is configured",
      );
      return;
    }
    const replaced = await this.refreshAfterDenial();
    if (!replaced && !this.closed) {
      // Try again soon: Vault may be sealed or unreachable right now.
      this.renewTimer = setTimeout(() => void this.renewOrReplace(), 5_000);
      this.renewTimer.unref();
    }
  }

  private pollSecret(): void {
    const source = this.options.source;
    if (source.kind !== "secret") return;
    this.pollTimer = setInterval(() => {
      void source.read().then(
        (value) => {
          const next = value.trim();
          if (next !== "" && next !== this.token) void this.refreshAfterDenial();
        },
        (error: unknown) =>
          this.options.logger.warn(
            { event: "vault.token.secret_read_failed", error: (error as Error).message },
            `could not re-read ${source.describe}`,
          ),
      );
    }, source.pollMs);
    this.pollTimer.unref();
  }
}
