// Vault's HTTP API over undici: one keep-alive pool per Vault origin with a bounded number of
// connections, a deadline on every call, bounded retries for what Vault documents as transient
// (429, 5xx, sealed, standby, lost connections), and typed errors carrying Vault's own
// `{"errors": [...]}` text so callers branch on the status, not on message text.

import { setTimeout as sleep } from "node:timers/promises";
import { Agent, type Dispatcher, errors as undiciErrors } from "undici";
import type { Logger } from "../../../common/logger.js";

/** Vault answered with an error status. */
export class VaultApiError extends Error {
  readonly code = "ERR_OSM_CERT_VAULT_API";
  constructor(
    readonly method: string,
    /** Without the leading /v1/. */
    readonly path: string,
    readonly status: number,
    /** Vault's `errors` array, as Vault wrote it (may be empty, e.g. a 404 on a read). */
    readonly errors: readonly string[],
  ) {
    super(`Vault ${method} /v1/${path}: HTTP ${status}${errors.length > 0 ? `: ${errors.join("; ")}` : ""}`);
  }

  /** Vault's reason in one line (multierror formatting folded). */
  get reason(): string {
    const text = this.errors
      .map((e) =>
        e
          .replace(/^\d+ errors? occurred:\s*/, "")
          .replace(/\s*\*\s*/g, " ")
          .trim(),
      )
      .join("; ");
    return text === "" ? `HTTP ${this.status}` : text;
  }
}

/** No answer: refused, reset, TLS failure or the deadline passed. */
export class VaultConnectionError extends Error {
  readonly code = "ERR_OSM_CERT_VAULT_CONNECTION";
  constructor(
    readonly method: string,
    readonly path: string,
    message: string,
    readonly timedOut: boolean,
  ) {
    super(`Vault ${method} /v1/${path}: ${message}`);
  }
}

export interface VaultClientOptions {
  /** `http(s)://host:port`. */
  readonly address: string;
  /** PEM CA bundle that verifies Vault's listener certificate (https). */
  readonly caPem?: string;
  /** Vault Enterprise namespace (X-Vault-Namespace). */
  readonly namespace?: string;
  /** Connections per Vault origin. */
  readonly connections?: number;
  /** Deadline of one attempt (connect, headers and body). */
  readonly timeoutMs?: number;
  /** Attempts for transient failures, the first included. */
  readonly attempts?: number;
  readonly baseDelayMs?: number;
  readonly logger?: Logger;
}

export interface VaultRequest {
  readonly method: "GET" | "POST";
  /** Without the leading /v1/. */
  readonly path: string;
  readonly token?: string;
  readonly body?: Record<string, unknown>;
  /** Overrides the client's attempts (1: no retry). */
  readonly attempts?: number;
  readonly signal?: AbortSignal;
}

export interface VaultResponse {
  readonly status: number;
  /** Parsed JSON, or null for a non-JSON body (the PEM endpoints). */
  readonly json: Record<string, unknown> | null;
  readonly text: string;
}

const MAX_RESPONSE_BYTES = 1024 * 1024;
/** What Vault documents as worth retrying: rate limits, server errors, sealed and standby nodes. */
const RETRYABLE_STATUS = new Set([412, 429, 500, 502, 503, 504]);

export function isTransient(error: unknown): boolean {
  if (error instanceof VaultConnectionError) return true;
  return error instanceof VaultApiError && RETRYABLE_STATUS.has(error.status);
}

export class VaultClient {
  readonly address: string;
  private readonly agent: Agent;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly baseDelayMs: number;

  constructor(private readonly options: VaultClientOptions) {
    const url = new URL(options.address);
    this.address = url.origin;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.attempts = Math.max(1, options.attempts ?? 3);
    this.baseDelayMs = options.baseDelayMs ?? 200;
    this.agent = new Agent({
      connections: options.connections ?? 16,
      keepAliveTimeout: 30_000,
      connect: { ...(options.caPem ? { ca: options.caPem } : {}), timeout: this.timeoutMs },
    });
  }

  async request(request: VaultRequest): Promise<VaultResponse> {
    const attempts = Math.max(1, request.attempts ?? this.attempts);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.once(request, this.address, 0);
      } catch (error) {
        if (!isTransient(error) || attempt >= attempts || request.signal?.aborted) throw error;
        const delay = Math.min(5_000, this.baseDelayMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
        this.options.logger?.warn(
          { event: "vault.retry", attempt, delayMs: Math.round(delay), error: (error as Error).message },
          "retrying a Vault request",
        );
        await sleep(delay, undefined, request.signal ? { signal: request.signal } : {});
      }
    }
  }

  private async once(request: VaultRequest, origin: string, redirects: number): Promise<VaultResponse> {
    const { method, path } = request;
    const headers: Record<string, string> = { accept: "application/json" };
    if (request.token !== undefined) headers["x-vault-token"] = request.token;
    if (this.options.namespace) headers["x-vault-namespace"] = this.options.namespace;
    if (request.body !== undefined) headers["content-type"] = "application/json";
    const signal = request.signal
      ? AbortSignal.any([request.signal, AbortSignal.timeout(this.timeoutMs)])
      : AbortSignal.timeout(this.timeoutMs);
    let response: Dispatcher.ResponseData;
    try {
      response = await this.agent.request({
        origin,
        path: `/v1/${path}`,
        method,
        headers,
        ...(request.body !== undefined ? { body: JSON.stringify(request.body) } : {}),
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
        signal,
      });
    } catch (error) {
      throw this.connectionError(method, path, error, signal);
    }
    let text: string;
    try {
      text = await readLimited(response.body);
    } catch (error) {
      throw this.connectionError(method, path, error, signal);
    }
    const { statusCode } = response;
    if ((statusCode === 307 || statusCode === 308) && redirects === 0) {
      // A standby with request forwarding off points at the active node; follow once, never downgrade.
      const location = response.headers.location;
      const target = typeof location === "string" ? safeRedirect(origin, location) : null;
      if (target !== null) return this.once(request, target, redirects + 1);
    }
    let json: Record<string, unknown> | null = null;
    if (text.trim().startsWith("{")) {
      try {
        json = JSON.parse(text) as Record<string, unknown>;
      } catch {
        json = null;
      }
    }
    if (statusCode >= 300) {
      const errors = Array.isArray(json?.errors) ? (json.errors as unknown[]).map(String) : [];
      if (statusCode === 307 || statusCode === 308) {
        errors.push(
          "redirected again by the active node; point --vault-host at the active node or its Service",
        );
      }
      throw new VaultApiError(method, path, statusCode, errors);
    }
    return { status: statusCode, json, text };
  }

  private connectionError(method: string, path: string, error: unknown, signal: AbortSignal): Error {
    if (error instanceof VaultApiError) return error;
    const timedOut =
      signal.aborted ||
      error instanceof undiciErrors.HeadersTimeoutError ||
      error instanceof undiciErrors.BodyTimeoutError ||
      error instanceof undiciErrors.ConnectTimeoutError;
    const e = error as { code?: string; message?: string };
    const detail = timedOut
      ? `no answer within ${this.timeoutMs} ms`
      : `${e.code ? `${e.code}: ` : ""}${e.message ?? String(error)}`;
    return new VaultConnectionError(method, path, detail, timedOut);
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}

function safeRedirect(origin: string, location: string): string | null {
  try {
    const target = new URL(location, origin);
    const from = new URL(origin);
    if (from.protocol === "https:" && target.protocol !== "https:") return null;
    if (target.protocol !== "http:" && target.protocol !== "https:") return null;
    return target.origin;
  } catch {
    return null;
  }
}

async function readLimited(body: Dispatcher.ResponseData["body"]): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > MAX_RESPONSE_BYTES) {
      body.destroy();
      throw new Error(`response larger than ${MAX_RESPONSE_BYTES} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}
