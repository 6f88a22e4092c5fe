// A fake HashiCorp Vault for tests (DESIGN.md §10), written from Vault's public HTTP API documentation
// (developer.hashicorp.com/vault/api-docs: secret/pki, auth/token, auth/kubernetes, system/health,
// system/seal-status, system/capabilities-self) rather than from our provider: the real paths, the
// `X-Vault-Token` / `Authorization: Bearer` and `X-Vault-Namespace` headers, ACL policies with path
// globs and capabilities, a PKI mount with a generated root (optionally an intermediate under it),
// roles enforced the way the PKI engine enforces them (names, URI globs, IP SANs, key type and
// size, TTL clamped to max_ttl with a warning), token TTLs and renewal, Kubernetes auth login,
// seal/unseal and standby, and Vault's `{"errors": [...]}` bodies with their status codes.
// Switches inject latency, 5xx answers and dropped connections; every request is recorded.
//
// Deliberate simplifications: one PKI mount and one issuer; the Kubernetes auth method does not call
// a TokenReviewer (the JWT's claims are trusted, or a callback decides); namespaces are flat (a
// token works only in the namespace it was made in); no leases, CRLs, wrapping or audit devices.

import { createHash, createPublicKey, type KeyObject, randomBytes, randomUUID } from "node:crypto";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { type AddressInfo, isIP, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { parseDuration } from "../../common/duration.js";
import { generateKeyPair, privateKeyToPem } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import {
  buildCertificate,
  certificateSubjectDer,
  encodeName,
  ext,
  keyIdentifier,
  randomSerialNumber,
  signerFor,
} from "../../common/x509/certificate.js";
import { CsrError, type ParsedCsr, parseCsrPem } from "../../common/x509/csr.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

export type Capability = "create" | "read" | "update" | "delete" | "list" | "sudo" | "deny";

/** A PKI role, with the fields and defaults of `POST /v1/<mount>/roles/:name`. */
export interface PkiRole {
  ttl?: string;
  max_ttl?: string;
  allow_localhost?: boolean;
  allowed_domains?: string[];
  allow_bare_domains?: boolean;
  allow_subdomains?: boolean;
  allow_glob_domains?: boolean;
  allow_any_name?: boolean;
  enforce_hostnames?: boolean;
  allow_ip_sans?: boolean;
  allowed_uri_sans?: string[];
  server_flag?: boolean;
  client_flag?: boolean;
  key_type?: "rsa" | "ec" | "ed25519" | "any";
  key_bits?: number;
  require_cn?: boolean;
  use_csr_common_name?: boolean;
  use_csr_sans?: boolean;
  not_before_duration?: string;
}

/** The role after Vault's defaults (documented on the roles endpoint). */
type EffectiveRole = Required<PkiRole>;

function withDefaults(role: PkiRole): EffectiveRole {
  const keyType = role.key_type ?? "rsa";
  return {
    ttl: role.ttl ?? "0",
    max_ttl: role.max_ttl ?? "0",
    allow_localhost: role.allow_localhost ?? true,
    allowed_domains: role.allowed_domains ?? [],
    allow_bare_domains: role.allow_bare_domains ?? false,
    allow_subdomains: role.allow_subdomains ?? false,
    allow_glob_domains: role.allow_glob_domains ?? false,
    allow_any_name: role.allow_any_name ?? false,
    enforce_hostnames: role.enforce_hostnames ?? true,
    allow_ip_sans: role.allow_ip_sans ?? true,
    allowed_uri_sans: role.allowed_uri_sans ?? [],
    server_flag: role.server_flag ?? true,
    client_flag: role.client_flag ?? true,
    key_type: keyType,
    // Vault's defaults: 2048 for rsa, 256 for ec; 0 ("any") means only Vault's own minimums.
    key_bits: role.key_bits ?? (keyType === "rsa" ? 2048 : keyType === "ec" ? 256 : 0),
    require_cn: role.require_cn ?? true,
    use_csr_common_name: role.use_csr_common_name ?? true,
    use_csr_sans: role.use_csr_sans ?? true,
    not_before_duration: role.not_before_duration ?? "30s",
  };
}

export interface TokenOptions {
  policies?: string[];
  /** Go duration; "0" or absent: no expiry (as for root tokens). */
  ttl?: string;
  explicitMaxTtl?: string;
  renewable?: boolean;
  namespace?: string;
  noDefaultPolicy?: boolean;
  displayName?: string;
}

interface TokenEntry {
  readonly id: string;
  readonly accessor: string;
  readonly policies: string[];
  readonly namespace: string;
  readonly renewable: boolean;
  readonly creationTtlS: number;
  readonly explicitMaxTtlS: number;
  readonly issuedAt: number;
  readonly displayName: string;
  readonly meta: Record<string, string> | null;
  expiresAt: number | null;
}

export interface KubernetesAuthRole {
  boundServiceAccountNames: string[];
  boundServiceAccountNamespaces: string[];
  policies: string[];
  /** Go duration of the issued token. */
  ttl?: string;
  maxTtl?: string;
}

/** Claims the Kubernetes auth method reads from a ServiceAccount JWT. */
export interface ServiceAccountClaims {
  namespace: string;
  name: string;
  uid?: string;
}

export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly namespace: string;
  /** Whether a token was presented (never the token itself). */
  readonly token: boolean;
  /** Request body fields of interest (never a JWT or a token). */
  readonly body?: Record<string, unknown>;
  /** HTTP status; 0 when the fake hung up without answering. */
  readonly status: number;
}

export interface FakeVaultOptions {
  /** Serve HTTPS with a listener certificate from a CA of its own (`listenerCaPem`). */
  readonly tls?: boolean;
  readonly mount?: string;
  /** Vault Enterprise namespace the PKI mount, the auth method and tokens live in ("" = root). */
  readonly namespace?: string;
  /** Sign the mount's issuer by a separate root (the recommended intermediate set-up). */
  readonly intermediate?: boolean;
  readonly caCommonName?: string;
  /** Mount tuning: default and max lease TTL (Vault's defaults are 768h). */
  readonly defaultLeaseTtl?: string;
  readonly maxLeaseTtl?: string;
  /** Decides who a Kubernetes JWT belongs to; default: its claims, unverified, and its `exp`. */
  readonly reviewJwt?: (jwt: string) => ServiceAccountClaims | null;
}

interface CaCert {
  readonly der: Buffer;
  readonly pem: string;
  readonly key: KeyObject;
  readonly notAfter: Date;
}

class VaultError {
  constructor(
    readonly status: number,
    readonly errors: string[],
  ) {}
}

const permissionDenied = () => new VaultError(403, ["permission denied"]);
const MAX_BODY_BYTES = 32 * 1024 * 1024;

export class FakeVault {
  readonly requests: RecordedRequest[] = [];
  readonly rootToken: string;
  readonly mount: string;
  readonly namespace: string;
  sealed = false;
  /** When set, the node is a standby: requests are redirected (307) to this active node's address. */
  standbyOf: string | null | undefined = undefined;
  latencyMs = 0;
  private readonly roles = new Map<string, EffectiveRole>();
  private readonly policies = new Map<string, Map<string, Capability[]>>();
  private readonly tokens = new Map<string, TokenEntry>();
  private readonly kubeRoles = new Map<string, KubernetesAuthRole>();
  private faults: { count: number; status: number; pathPrefix: string }[] = [];
  private drops: { count: number; pathPrefix: string }[] = [];
  private readonly sockets = new Set<Socket>();
  private issuer!: CaCert;
  private root!: CaCert;
  private url_ = "";

  private constructor(
    private readonly server: Server,
    readonly options: FakeVaultOptions,
    readonly listenerCaPem: string | null,
  ) {
    this.mount = options.mount ?? "pki";
    this.namespace = normaliseNamespace(options.namespace ?? "");
    this.rootToken = `hvs.${randomBytes(18).toString("base64url")}`;
    this.tokens.set(this.rootToken, {
      id: this.rootToken,
      accessor: randomBytes(12).toString("base64url"),
      policies: ["root"],
      namespace: this.namespace,
      renewable: false,
      creationTtlS: 0,
      explicitMaxTtlS: 0,
      issuedAt: Date.now(),
      displayName: "root",
      meta: null,
      expiresAt: null,
    });
    this.policies.set(
      "default",
      new Map<string, Capability[]>([
        ["auth/token/lookup-self", ["read"]],
        ["auth/token/renew-self", ["update"]],
        ["auth/token/revoke-self", ["update"]],
        ["sys/capabilities-self", ["update"]],
      ]),
    );
  }

  static async start(options: FakeVaultOptions = {}): Promise<FakeVault> {
    let listener: { cert: string; key: string; caPem: string } | null = null;
    if (options.tls) listener = await listenerCertificate();
    const handler = (req: IncomingMessage, res: ServerResponse) => void fake.handle(req, res);
    const server = listener
      ? createHttpsServer({ cert: listener.cert, key: listener.key }, handler)
      : createHttpServer(handler);
    const fake: FakeVault = new FakeVault(server, options, listener?.caPem ?? null);
    await fake.generateCa();
    server.on("connection", (socket: Socket) => {
      fake.sockets.add(socket);
      socket.on("close", () => fake.sockets.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as AddressInfo;
    fake.url_ = `${options.tls ? "https" : "http"}://127.0.0.1:${port}`;
    return fake;
  }

  get url(): string {
    return this.url_;
  }

  /** The mesh root as Vault holds it (the top of the chain). */
  get rootPem(): string {
    return this.root.pem;
  }

  get issuerPem(): string {
    return this.issuer.pem;
  }

  /** Replaces the CA (as `pki/root/rotate` plus a new default issuer would): a new trust bundle. */
  async rotateCa(): Promise<void> {
    await this.generateCa();
  }

  writeRole(name: string, role: PkiRole): void {
    this.roles.set(name, withDefaults(role));
  }

  writePolicy(name: string, paths: Record<string, Capability[]>): void {
    this.policies.set(name, new Map(Object.entries(paths)));
  }

  createToken(options: TokenOptions = {}): string {
    const id = `hvs.${randomBytes(18).toString("base64url")}`;
    const ttlS = options.ttl ? Math.round(parseDuration(options.ttl) / 1000) : 0;
    const maxS = options.explicitMaxTtl ? Math.round(parseDuration(options.explicitMaxTtl) / 1000) : 0;
    const policies = [...(options.noDefaultPolicy ? [] : ["default"]), ...(options.policies ?? [])];
    this.tokens.set(id, {
      id,
      accessor: randomBytes(12).toString("base64url"),
      policies: [...new Set(policies)].sort(),
      namespace: normaliseNamespace(options.namespace ?? this.namespace),
      renewable: options.renewable ?? ttlS > 0,
      creationTtlS: ttlS,
      explicitMaxTtlS: maxS,
      issuedAt: Date.now(),
      displayName: options.displayName ?? "token",
      meta: null,
      expiresAt: ttlS > 0 ? Date.now() + ttlS * 1000 : null,
    });
    return id;
  }

  revokeToken(id: string): void {
    this.tokens.delete(id);
  }

  /** Seconds left on a token, or null when it never expires / does not exist. */
  tokenTtlSeconds(id: string): number | null {
    const entry = this.tokens.get(id);
    if (entry === undefined || entry.expiresAt === null) return null;
    return Math.max(0, Math.round((entry.expiresAt - Date.now()) / 1000));
  }

  writeKubernetesRole(name: string, role: KubernetesAuthRole): void {
    this.kubeRoles.set(name, role);
  }

  seal(): void {
    this.sealed = true;
  }

  unseal(): void {
    this.sealed = false;
  }

  /** The next `count` requests whose path starts with `pathPrefix` (after /v1/) get `status`. */
  failNext(count: number, status: number, pathPrefix = ""): void {
    this.faults.push({ count, status, pathPrefix });
  }

  /** The next `count` matching requests lose their connection without an answer. */
  dropNext(count: number, pathPrefix = ""): void {
    this.drops.push({ count, pathPrefix });
  }

  clearFaults(): void {
    this.faults = [];
    this.drops = [];
    this.latencyMs = 0;
  }

  requestsTo(pathPrefix: string): RecordedRequest[] {
    return this.requests.filter((r) => r.path.startsWith(`/v1/${pathPrefix}`));
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://vault");
    const method = req.method ?? "GET";
    const headerNs = req.headers["x-vault-namespace"];
    const namespace = normaliseNamespace(Array.isArray(headerNs) ? (headerNs[0] ?? "") : (headerNs ?? ""));
    const token = tokenOf(req);
    let body: JsonObject = {};
    let recordedBody: Record<string, unknown> | undefined;
    const record = (status: number) =>
      this.requests.push({
        method,
        path: url.pathname,
        namespace,
        token: token !== null,
        ...(recordedBody ? { body: recordedBody } : {}),
        status,
      });
    try {
      if (this.latencyMs > 0) await sleep(this.latencyMs);
      const rel = url.pathname.startsWith("/v1/") ? url.pathname.slice(4).replace(/\/+$/, "") : null;
      if (rel !== null && this.take(this.drops, rel)) {
        record(0);
        req.socket.destroy();
        return;
      }
      if (method === "POST" || method === "PUT") {
        body = await readJson(req);
        recordedBody = summarise(body);
      } else {
        req.resume();
      }
      if (rel === null) throw new VaultError(404, []);
      const fault = this.take(this.faults, rel);
      if (fault !== undefined) throw new VaultError(fault.status, [`injected fault: HTTP ${fault.status}`]);
      const answer = await this.route(method, rel, url.searchParams, namespace, token, body);
      record(answer.status);
      if (answer.redirect !== undefined) {
        res.writeHead(answer.status, { location: answer.redirect }).end();
      } else if (answer.text !== undefined) {
        res.writeHead(answer.status, { "content-type": answer.contentType ?? "text/plain" }).end(answer.text);
      } else if (answer.json === undefined) {
        res.writeHead(answer.status).end();
      } else {
        res
          .writeHead(answer.status, { "content-type": "application/json", "cache-control": "no-store" })
          .end(JSON.stringify(answer.json));
      }
    } catch (error) {
      const e =
        error instanceof VaultError
          ? error
          : new VaultError(500, [`1 error occurred:\n\t* ${(error as Error).message}\n\n`]);
      record(e.status);
      if (!res.headersSent) {
        res
          .writeHead(e.status, { "content-type": "application/json", "cache-control": "no-store" })
          .end(JSON.stringify({ errors: e.errors }));
      }
    }
  }

  private take<T extends { count: number; pathPrefix: string }>(list: T[], rel: string): T | undefined {
    const found = list.find((f) => f.count > 0 && rel.startsWith(f.pathPrefix));
    if (found !== undefined) found.count--;
    return found;
  }

  private async route(
    method: string,
    rel: string,
    query: URLSearchParams,
    namespace: string,
    token: string | null,
    body: JsonObject,
  ): Promise<Answer> {
    // sys/health and sys/seal-status answer in every state: they are how clients find out the state.
    if (rel === "sys/health") return this.health(method, query);
    if (rel === "sys/seal-status") {
      return ok({
        type: "shamir",
        initialized: true,
        sealed: this.sealed,
        t: 1,
        n: 1,
        progress: 0,
        nonce: "",
        version: "1.17.0",
        migration: false,
        recovery_seal: false,
        storage_type: "raft",
      });
    }
    if (this.sealed) throw new VaultError(503, ["Vault is sealed"]);
    if (this.standbyOf !== undefined) {
      // Request forwarding off: a standby sends clients to the active node, or fails if none is known.
      if (this.standbyOf === null) {
        throw new VaultError(500, ["local node not active but active cluster node not found"]);
      }
      const search = query.toString();
      return { status: 307, redirect: `${this.standbyOf}/v1/${rel}${search ? `?${search}` : ""}` };
    }

    if (rel === "auth/kubernetes/login" && isWrite(method)) return this.kubernetesLogin(namespace, body);

    // PKI paths readable without a token (the CA, so relying parties can fetch it).
    const mountPrefix = `${this.mount}/`;
    if (rel.startsWith(mountPrefix) && namespace === this.namespace && method === "GET") {
      const sub = rel.slice(mountPrefix.length);
      if (sub === "ca_chain") {
        return {
          status: 200,
          text: this.chainPems().join(""),
          contentType: "application/pem-certificate-chain",
        };
      }
      if (sub === "ca/pem")
        return { status: 200, text: this.issuer.pem, contentType: "application/pem-certificate-chain" };
      if (sub === "cert/ca_chain") {
        return ok({
          data: { certificate: this.chainPems().join(""), ca_chain: this.chainPems(), revocation_time: 0 },
        });
      }
    }

    if (token === null) throw new VaultError(403, ["missing client token"]);
    const entry = this.tokens.get(token);
    if (entry === undefined || entry.namespace !== namespace) throw permissionDenied();
    if (entry.expiresAt !== null && entry.expiresAt <= Date.now()) {
      this.tokens.delete(token);
      throw permissionDenied();
    }

    const operation = operationOf(method, query);
    if (operation === null) throw new VaultError(405, ["unsupported operation"]);

    switch (rel) {
      case "auth/token/lookup-self":
        this.authorise(entry, rel, "read");
        if (operation !== "read") throw new VaultError(405, ["unsupported operation"]);
        return ok(envelope(this.lookup(entry)));
      case "auth/token/renew-self":
        this.authorise(entry, rel, "update");
        if (operation !== "update") throw new VaultError(405, ["unsupported operation"]);
        return this.renew(entry, body);
      case "sys/capabilities-self": {
        this.authorise(entry, rel, "update");
        const paths = Array.isArray(body.paths)
          ? body.paths.map(String)
          : typeof body.path === "string"
            ? [body.path]
            : [];
        if (paths.length === 0) throw new VaultError(400, ["'path' or 'paths' must be specified"]);
        const result: JsonObject = {};
        for (const p of paths) result[p] = this.capabilities(entry, p.replace(/^\/+/, ""));
        if (paths.length === 1) result.capabilities = result[paths[0] as string] as Json;
        return ok({ ...result, ...envelope(result) });
      }
    }

    if (!rel.startsWith(mountPrefix) || namespace !== this.namespace) {
      throw new VaultError(404, [`no handler for route "${rel}". route entry not found.`]);
    }
    const sub = rel.slice(mountPrefix.length);
    const [head, name, ...extra] = sub.split("/");
    if ((head === "sign" || head === "issue") && name !== undefined && extra.length === 0) {
      if (operation !== "update" && operation !== "create")
        throw new VaultError(405, ["unsupported operation"]);
      this.authorise(entry, rel, "update");
      return head === "sign" ? this.sign(name, body) : this.issue(name, body);
    }
    if (head === "roles" && name !== undefined && extra.length === 0) {
      if (operation === "read") {
        this.authorise(entry, rel, "read");
        const role = this.roles.get(name);
        if (role === undefined) return { status: 404, json: { errors: [] } };
        return ok(envelope(role as unknown as JsonObject));
      }
      if (operation === "update" || operation === "create") {
        this.authorise(entry, rel, this.roles.has(name) ? "update" : "create");
        this.writeRole(name, body as PkiRole);
        return { status: 204 };
      }
      throw new VaultError(405, ["unsupported operation"]);
    }
    throw new VaultError(404, [`no handler for route "${rel}". route entry not found.`]);
  }

  private health(method: string, query: URLSearchParams): Answer {
    if (method !== "GET" && method !== "HEAD") throw new VaultError(405, ["unsupported operation"]);
    const code = (name: string, fallback: number) => {
      const v = query.get(name);
      return v !== null && /^\d+$/.test(v) ? Number(v) : fallback;
    };
    const standby = this.standbyOf !== undefined;
    let status: number;
    if (this.sealed) status = code("sealedcode", 503);
    else if (standby)
      status = query.get("standbyok") === "true" ? code("activecode", 200) : code("standbycode", 429);
    else status = code("activecode", 200);
    return {
      status,
      json: {
        initialized: true,
        sealed: this.sealed,
        standby,
        performance_standby: false,
        replication_performance_mode: "disabled",
        replication_dr_mode: "disabled",
        server_time_utc: Math.floor(Date.now() / 1000),
        version: "1.17.0",
        cluster_name: "vault-cluster-fake",
        cluster_id: "00000000-0000-0000-0000-000000000000",
      },
    };
  }

  // -------------------------------------------------------------------------------------------
  // ACL

  private capabilities(entry: TokenEntry, path: string): Capability[] {
    if (entry.policies.includes("root")) return ["root" as Capability];
    // The most specific matching rule of each policy wins; policies are then unioned. A deny anywhere wins.
    const found = new Set<Capability>();
    for (const name of entry.policies) {
      const policy = this.policies.get(name);
      if (policy === undefined) continue;
      let best: { pattern: string; caps: Capability[] } | undefined;
      for (const [pattern, caps] of policy) {
        if (!pathMatches(pattern, path)) continue;
        if (best === undefined || moreSpecific(pattern, best.pattern)) best = { pattern, caps };
      }
      for (const c of best?.caps ?? []) found.add(c);
    }
    // Vault answers "deny" for a path the token can do nothing with.
    if (found.has("deny") || found.size === 0) return ["deny"];
    return [...found].sort();
  }

  private authorise(entry: TokenEntry, path: string, needed: Capability): void {
    const caps = this.capabilities(entry, path);
    if (caps.includes("root" as Capability)) return;
    if (!caps.includes(needed)) throw permissionDenied();
  }

  // -------------------------------------------------------------------------------------------
  // Tokens

  private lookup(entry: TokenEntry): JsonObject {
    const now = Date.now();
    return {
      accessor: entry.accessor,
      creation_time: Math.floor(entry.issuedAt / 1000),
      creation_ttl: entry.creationTtlS,
      display_name: entry.displayName,
      entity_id: "",
      expire_time: entry.expiresAt === null ? null : new Date(entry.expiresAt).toISOString(),
      explicit_max_ttl: entry.explicitMaxTtlS,
      id: entry.id,
      issue_time: new Date(entry.issuedAt).toISOString(),
      meta: entry.meta,
      namespace_path: entry.namespace === "" ? "" : `${entry.namespace}/`,
      num_uses: 0,
      orphan: false,
      path: entry.displayName === "root" ? "auth/token/root" : "auth/token/create",
      policies: entry.policies,
      renewable: entry.renewable,
      ttl: entry.expiresAt === null ? 0 : Math.max(0, Math.round((entry.expiresAt - now) / 1000)),
      type: "service",
    };
  }

  private renew(entry: TokenEntry, body: JsonObject): Answer {
    if (!entry.renewable) throw new VaultError(400, ["lease is not renewable"]);
    const warnings: string[] = [];
    let incrementS = entry.creationTtlS;
    if (body.increment !== undefined && body.increment !== null) incrementS = durationSeconds(body.increment);
    if (incrementS <= 0) incrementS = entry.creationTtlS;
    let expiresAt = Date.now() + incrementS * 1000;
    if (entry.explicitMaxTtlS > 0) {
      const cap = entry.issuedAt + entry.explicitMaxTtlS * 1000;
      if (expiresAt > cap) {
        expiresAt = cap;
        warnings.push("TTL of the token was capped by the explicit max TTL");
      }
    }
    entry.expiresAt = expiresAt;
    const leaseS = Math.max(0, Math.round((expiresAt - Date.now()) / 1000));
    return ok({
      ...envelope(null),
      warnings: warnings.length > 0 ? warnings : null,
      auth: this.authBlock(entry, leaseS),
    });
  }

  private authBlock(entry: TokenEntry, leaseS: number): JsonObject {
    return {
      client_token: entry.id,
      accessor: entry.accessor,
      policies: entry.policies,
      token_policies: entry.policies,
      metadata: entry.meta,
      lease_duration: leaseS,
      renewable: entry.renewable,
      entity_id: "",
      token_type: "service",
      orphan: true,
    };
  }

  private kubernetesLogin(namespace: string, body: JsonObject): Answer {
    if (namespace !== this.namespace) {
      throw new VaultError(404, [`no handler for route "auth/kubernetes/login". route entry not found.`]);
    }
    const roleName = typeof body.role === "string" ? body.role : "";
    if (roleName === "") throw new VaultError(400, ["missing role"]);
    const jwt = typeof body.jwt === "string" ? body.jwt : "";
    if (jwt === "") throw new VaultError(400, ["missing jwt"]);
    const role = this.kubeRoles.get(roleName);
    if (role === undefined) throw new VaultError(400, [`invalid role name "${roleName}"`]);
    const claims = (this.options.reviewJwt ?? claimsOfJwt)(jwt);
    if (claims === null) throw permissionDenied();
    const names = role.boundServiceAccountNames;
    if (!names.includes("*") && !names.includes(claims.name)) {
      throw new VaultError(403, ["service account name not authorized"]);
    }
    const namespaces = role.boundServiceAccountNamespaces;
    if (!namespaces.includes("*") && !namespaces.includes(claims.namespace)) {
      throw new VaultError(403, ["namespace not authorized"]);
    }
    const ttlS = role.ttl ? Math.round(parseDuration(role.ttl) / 1000) : 2_764_800;
    const id = this.createToken({
      policies: role.policies,
      ttl: `${ttlS}s`,
      ...(role.maxTtl ? { explicitMaxTtl: role.maxTtl } : {}),
      renewable: true,
      namespace: this.namespace,
      displayName: `kubernetes-${claims.namespace}-${claims.name}`,
    });
    const entry = this.tokens.get(id) as TokenEntry;
    (entry as { meta: Record<string, string> }).meta = {
      role: roleName,
      service_account_name: claims.name,
      service_account_namespace: claims.namespace,
      service_account_uid: claims.uid ?? "",
    };
    return ok({ ...envelope(null), auth: this.authBlock(entry, ttlS) });
  }

  // -------------------------------------------------------------------------------------------
  // PKI

  private async generateCa(): Promise<void> {
    const name = this.options.caCommonName ?? "Vault Root CA";
    const root = await makeCa(name, null);
    this.root = root;
    this.issuer = this.options.intermediate ? await makeCa(`${name} Intermediate`, root) : root;
  }

  /** The issuer's chain as Vault returns it: the issuer first, up to and including the root. */
  private chainPems(): string[] {
    return this.issuer === this.root ? [this.root.pem] : [this.issuer.pem, this.root.pem];
  }

  private sign(roleName: string, body: JsonObject): Answer {
    const role = this.roles.get(roleName);
    if (role === undefined) throw new VaultError(400, [`unknown role: ${roleName}`]);
    const csrText = typeof body.csr === "string" ? body.csr : "";
    if (csrText === "") throw new VaultError(400, ['"csr" is empty']);
    let csr: ParsedCsr;
    try {
      csr = parseCsrPem(csrText);
    } catch (error) {
      if (error instanceof CsrError) {
        throw new VaultError(400, [`certificate request could not be parsed: ${error.message}`]);
      }
      throw error;
    }
    this.checkKey(role, csr);
    return this.certify(role, body, csr.publicKey.spki, csr);
  }

  private async issueKey(): Promise<KeyObject> {
    return (await generateKeyPair("ecdsa-p256")).privateKey;
  }

  private async issue(roleName: string, body: JsonObject): Promise<Answer> {
    const role = this.roles.get(roleName);
    if (role === undefined) throw new VaultError(400, [`unknown role: ${roleName}`]);
    const key = await this.issueKey();
    const spki = createPublicKey(key).export({ type: "spki", format: "der" });
    const answer = this.certify(role, body, spki, null);
    const data = (answer.json as JsonObject).data as JsonObject;
    data.private_key = privateKeyToPem(key);
    data.private_key_type = "ec";
    return answer;
  }

  private checkKey(role: EffectiveRole, csr: ParsedCsr): void {
    const actual = csr.publicKey.algorithm;
    const bits = actual === "rsa" ? (csr.publicKey.rsaBits ?? 0) : Number(csr.publicKey.curve?.slice(2) ?? 0);
    if (role.key_type !== "any" && role.key_type !== actual) {
      throw new VaultError(400, [`role requires keys of type ${role.key_type}`]);
    }
    const minimum = role.key_type === "any" ? (actual === "rsa" ? 2048 : 224) : role.key_bits;
    if (bits < minimum) {
      throw new VaultError(400, [
        `role requires a minimum of a ${minimum}-bit key, but CSR's key is ${bits} bits`,
      ]);
    }
  }

  private certify(role: EffectiveRole, body: JsonObject, spki: Buffer, csr: ParsedCsr | null): Answer {
    // Names: from the CSR when the role says so (Vault's defaults for sign/), else from the request.
    let cn = csr !== null && role.use_csr_common_name ? (csr.subjectCommonName ?? "") : "";
    if (cn === "") cn = typeof body.common_name === "string" ? body.common_name : "";
    if (cn === "" && role.require_cn) {
      throw new VaultError(400, [
        'the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false',
      ]);
    }
    let dns: string[] = csr !== null && role.use_csr_sans ? [...csr.dnsNames] : [];
    if (cn !== "" && body.exclude_cn_from_sans !== true && HOSTNAME.test(cn)) dns.push(cn);
    if (csr === null || !role.use_csr_sans) dns.push(...listParam(body.alt_names));
    dns = [...new Set(dns)];
    if (cn !== "" && !this.nameAllowed(role, cn)) {
      throw new VaultError(400, [`common name ${cn} not allowed by this role`]);
    }
    const badDns = dns.find((n) => !this.nameAllowed(role, n));
    if (badDns !== undefined) {
      throw new VaultError(400, [`subject alternate name ${badDns} not allowed by this role`]);
    }

    let ips: string[];
    if (csr !== null && role.use_csr_sans) {
      ips = [...csr.ipAddresses];
      if (ips.length > 0 && !role.allow_ip_sans) {
        throw new VaultError(400, [
          "IP Subject Alternative Names are not allowed in this role, but was provided some via CSR",
        ]);
      }
    } else {
      ips = listParam(body.ip_sans);
      if (ips.length > 0 && !role.allow_ip_sans) {
        throw new VaultError(400, [
          `IP Subject Alternative Names are not allowed in this role, but was provided [${ips.join(" ")}]`,
        ]);
      }
      const badIp = ips.find((ip) => isIP(ip) === 0);
      if (badIp !== undefined) throw new VaultError(400, [`the value "${badIp}" is not a valid IP address`]);
    }

    let uris: string[];
    const via = csr !== null && role.use_csr_sans ? "CSR" : "the API";
    uris = csr !== null && role.use_csr_sans ? [...csr.uris] : listParam(body.uri_sans);
    if (uris.length > 0 && role.allowed_uri_sans.length === 0) {
      throw new VaultError(400, [
        `URI Subject Alternative Names are not allowed in this role, but were provided via ${via}`,
      ]);
    }
    if (uris.some((u) => !role.allowed_uri_sans.some((g) => glob(g, u)))) {
      throw new VaultError(400, [
        `URI Subject Alternative Names were provided via ${via} which are not valid for this role`,
      ]);
    }
    uris = [...new Set(uris)];

    // TTL: request, else role, else mount default; clamped to role max, else mount max, with a warning.
    const warnings: string[] = [];
    let ttlS = body.ttl !== undefined && body.ttl !== "" ? durationSeconds(body.ttl) : 0;
    const roleTtl = durationSeconds(role.ttl);
    const roleMax = durationSeconds(role.max_ttl);
    if (ttlS === 0 && roleTtl > 0) ttlS = roleTtl;
    const maxS = roleMax > 0 ? roleMax : durationSeconds(this.options.maxLeaseTtl ?? "768h");
    if (ttlS === 0) ttlS = durationSeconds(this.options.defaultLeaseTtl ?? "768h");
    if (ttlS > maxS) {
      warnings.push(
        `TTL "${goDuration(ttlS)}" is longer than permitted maxTTL "${goDuration(maxS)}", so maxTTL is being used`,
      );
      ttlS = maxS;
    }
    const now = Date.now();
    const notAfter = new Date(Math.floor((now + ttlS * 1000) / 1000) * 1000);
    if (notAfter.getTime() > this.issuer.notAfter.getTime()) {
      throw new VaultError(400, [
        `cannot satisfy request, as TTL would result in notAfter of ${notAfter.toISOString()} that is beyond the expiration of the CA certificate at ${this.issuer.notAfter.toISOString()}`,
      ]);
    }
    const notBefore = new Date(now - durationSeconds(role.not_before_duration) * 1000);

    const serial = randomSerialNumber();
    const eku: ("serverAuth" | "clientAuth")[] = [];
    if (role.server_flag) eku.push("serverAuth");
    if (role.client_flag) eku.push("clientAuth");
    const extensions = [
      ext.keyUsage(["digitalSignature", "keyEncipherment"]),
      ...(eku.length > 0 ? [ext.extKeyUsage(eku)] : []),
      ext.subjectKeyIdentifier(keyIdentifier(spki)),
      ext.authorityKeyIdentifier(keyIdentifier(spkiOf(this.issuer.key))),
    ];
    if (dns.length + uris.length + ips.length > 0) extensions.push(ext.subjectAltName({ dns, uris, ips }));
    const der = buildCertificate(
      {
        serialNumber: serial,
        issuer: certificateSubjectDer(this.issuer.der),
        subject: cn === "" ? Buffer.from([0x30, 0x00]) : encodeName({ commonName: cn }),
        spki,
        notBefore,
        notAfter,
        extensions,
      },
      signerFor(this.issuer.key),
    );
    const format = typeof body.format === "string" ? body.format : "pem";
    const pem = encodePem("CERTIFICATE", der);
    let certificate: string;
    let issuingCa = this.issuer.pem.trimEnd();
    let chain = this.chainPems().map((p) => p.trimEnd());
    if (format === "pem") certificate = pem.trimEnd();
    else if (format === "pem_bundle") certificate = `${pem}${this.issuer.pem}`.trimEnd();
    else if (format === "der") {
      certificate = der.toString("base64");
      issuingCa = this.issuer.der.toString("base64");
      chain = (this.issuer === this.root ? [this.root] : [this.issuer, this.root]).map((c) =>
        c.der.toString("base64"),
      );
    } else throw new VaultError(400, [`invalid format specified: ${format}`]);
    return ok({
      ...envelope({
        certificate,
        issuing_ca: issuingCa,
        ca_chain: chain,
        serial_number: serialText(serial),
        expiration: Math.floor(notAfter.getTime() / 1000),
      }),
      warnings: warnings.length > 0 ? warnings : null,
    });
  }

  private nameAllowed(role: EffectiveRole, name: string): boolean {
    if (role.enforce_hostnames && !HOSTNAME.test(name)) return false;
    if (role.allow_any_name) return true;
    if (role.allow_localhost && (name === "localhost" || name === "localdomain")) return true;
    for (const domain of role.allowed_domains) {
      if (domain === "") continue;
      if (role.allow_bare_domains && name.toLowerCase() === domain.toLowerCase()) return true;
      if (role.allow_subdomains && name.toLowerCase().endsWith(`.${domain.toLowerCase()}`)) return true;
      if (role.allow_glob_domains && domain.includes("*") && glob(domain.toLowerCase(), name.toLowerCase())) {
        return true;
      }
    }
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

interface Answer {
  status: number;
  json?: JsonObject;
  text?: string;
  contentType?: string;
  redirect?: string;
}

function ok(json: JsonObject): Answer {
  return { status: 200, json };
}

/** The response wrapper every logical path uses. */
function envelope(data: JsonObject | null): JsonObject {
  return {
    request_id: randomUUID(),
    lease_id: "",
    renewable: false,
    lease_duration: 0,
    data,
    wrap_info: null,
    warnings: null,
    auth: null,
  };
}

const HOSTNAME =
  /^(\*\.)?(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])\.)*([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])\.?$/;

function normaliseNamespace(ns: string): string {
  return ns.replace(/^\/+|\/+$/g, "");
}

function tokenOf(req: IncomingMessage): string | null {
  const header = req.headers["x-vault-token"];
  const value = Array.isArray(header) ? header[0] : header;
  if (value !== undefined && value !== "") return value;
  const auth = req.headers.authorization;
  const match = auth === undefined ? null : /^Bearer (.+)$/i.exec(auth);
  return match === null ? null : (match[1] as string);
}

function isWrite(method: string): boolean {
  return method === "POST" || method === "PUT";
}

type Operation = "read" | "update" | "create" | "delete" | "list";

function operationOf(method: string, query: URLSearchParams): Operation | null {
  if (method === "GET") return query.get("list") === "true" ? "list" : "read";
  if (method === "LIST") return "list";
  if (method === "POST" || method === "PUT") return "update";
  if (method === "DELETE") return "delete";
  return null;
}

/** Vault policy paths: a trailing `*` is a prefix match, `+` matches one path segment. */
function pathMatches(pattern: string, path: string): boolean {
  const prefix = pattern.endsWith("*");
  const body = prefix ? pattern.slice(0, -1) : pattern;
  const pSeg = body.split("/");
  const seg = path.split("/");
  if (!prefix && pSeg.length !== seg.length) return false;
  if (prefix && seg.length < pSeg.length) return false;
  for (let i = 0; i < pSeg.length; i++) {
    const p = pSeg[i] as string;
    const s = seg[i] as string;
    const last = i === pSeg.length - 1;
    if (p === "+") continue;
    if (prefix && last) {
      if (!s.startsWith(p)) return false;
    } else if (p !== s) return false;
  }
  return true;
}

/** Vault's priority: the pattern with the later first wildcard, then fewer `+`, then longer, wins. */
function moreSpecific(a: string, b: string): boolean {
  const firstWild = (p: string) => {
    const i = p.search(/[+*]/);
    return i === -1 ? p.length : i;
  };
  if (firstWild(a) !== firstWild(b)) return firstWild(a) > firstWild(b);
  const plus = (p: string) => p.split("+").length;
  if (plus(a) !== plus(b)) return plus(a) < plus(b);
  return a.length > b.length;
}

/** ryanuber/go-glob semantics: `*` matches any run of characters, nothing else is special. */
export function glob(pattern: string, subject: string): boolean {
  if (pattern === "*") return true;
  const parts = pattern.split("*");
  if (parts.length === 1) return pattern === subject;
  const first = parts[0] as string;
  const last = parts[parts.length - 1] as string;
  if (!subject.startsWith(first)) return false;
  let at = first.length;
  for (const part of parts.slice(1, -1)) {
    const i = subject.indexOf(part, at);
    if (i < 0) return false;
    at = i + part.length;
  }
  return subject.length - last.length >= at && subject.endsWith(last);
}

/** Vault list parameters: a JSON array, or one comma-separated string. */
function listParam(value: Json | undefined): string[] {
  if (Array.isArray(value))
    return value
      .map(String)
      .map((s) => s.trim())
      .filter((s) => s !== "");
  if (typeof value === "string")
    return value
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== "");
  return [];
}

/** Vault durations: integer seconds (number or string) or Go syntax. */
function durationSeconds(value: Json | undefined): number {
  if (value === undefined || value === null || value === "") return 0;
  if (typeof value === "number") return Math.floor(value);
  const text = String(value);
  if (/^\d+$/.test(text)) return Number(text);
  try {
    return Math.floor(parseDuration(text) / 1000);
  } catch {
    throw new VaultError(400, [
      `error converting input ${text} for field "ttl": time: invalid duration "${text}"`,
    ]);
  }
}

function goDuration(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return `${h > 0 ? `${h}h` : ""}${h > 0 || m > 0 ? `${m}m` : ""}${s}s`;
}

function serialText(serial: Buffer): string {
  return [...serial].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

function spkiOf(key: KeyObject): Buffer {
  return createPublicKey(key).export({ type: "spki", format: "der" });
}

/** Only the fields tests assert on; never a JWT, a token or a CSR body. */
function summarise(body: JsonObject): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of [
    "common_name",
    "alt_names",
    "uri_sans",
    "ip_sans",
    "ttl",
    "format",
    "role",
    "increment",
  ]) {
    if (body[key] !== undefined) out[key] = body[key];
  }
  if (typeof body.csr === "string")
    out.csr = createHash("sha256").update(body.csr).digest("hex").slice(0, 16);
  return out;
}

async function readJson(req: IncomingMessage): Promise<JsonObject> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new VaultError(413, ["request body too large"]);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") return {};
  try {
    const parsed = JSON.parse(text) as Json;
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error("not an object");
    }
    return parsed;
  } catch {
    throw new VaultError(400, ["failed to parse JSON input: invalid character"]);
  }
}

/** The default JWT review: the ServiceAccount named by the token's claims, if it has not expired. */
export function claimsOfJwt(jwt: string): ServiceAccountClaims | null {
  const parts = jwt.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(Buffer.from(parts[1] as string, "base64url").toString("utf8")) as {
      exp?: number;
      "kubernetes.io"?: { namespace?: string; serviceaccount?: { name?: string; uid?: string } };
    };
    if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) return null;
    const k = claims["kubernetes.io"];
    if (k?.namespace === undefined || k.serviceaccount?.name === undefined) return null;
    return { namespace: k.namespace, name: k.serviceaccount.name, uid: k.serviceaccount.uid ?? "" };
  } catch {
    return null;
  }
}

/** An unsigned ServiceAccount-style JWT for tests (the fake trusts its claims). */
export function fakeServiceAccountJwt(namespace: string, name: string, expiresInS = 3600): string {
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${enc({ alg: "RS256", kid: "fake" })}.${enc({
    iss: "https://kubernetes.default.svc.cluster.local",
    sub: `system:serviceaccount:${namespace}:${name}`,
    aud: ["vault"],
    exp: Math.floor(Date.now() / 1000) + expiresInS,
    "kubernetes.io": { namespace, serviceaccount: { name, uid: randomUUID() } },
  })}.${randomBytes(16).toString("base64url")}`;
}

async function makeCa(commonName: string, parent: CaCert | null): Promise<CaCert> {
  const { privateKey, publicKey } = await generateKeyPair("ecdsa-p256");
  const spki = publicKey.export({ type: "spki", format: "der" });
  const subject = encodeName({ commonName });
  const now = Date.now();
  const notAfter = new Date(Math.floor((now + (parent ? 5 : 10) * 365 * 86_400_000) / 1000) * 1000);
  const extensions = [
    ext.basicConstraints(true, parent ? 0 : undefined),
    ext.keyUsage(["keyCertSign", "cRLSign", "digitalSignature"]),
    ext.subjectKeyIdentifier(keyIdentifier(spki)),
  ];
  if (parent) extensions.push(ext.authorityKeyIdentifier(keyIdentifier(spkiOf(parent.key))));
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: parent ? certificateSubjectDer(parent.der) : subject,
      subject,
      spki,
      notBefore: new Date(now - 60_000),
      notAfter,
      extensions,
    },
    signerFor(parent ? parent.key : privateKey),
  );
  return { der, pem: encodePem("CERTIFICATE", der), key: privateKey, notAfter };
}

/** The HTTPS listener's own certificate (127.0.0.1, localhost), from a CA that is not the PKI mount. */
async function listenerCertificate(): Promise<{ cert: string; key: string; caPem: string }> {
  const ca = await makeCa("fake vault listener CA", null);
  const { privateKey, publicKey } = await generateKeyPair("ecdsa-p256");
  const spki = publicKey.export({ type: "spki", format: "der" });
  const now = Date.now();
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: certificateSubjectDer(ca.der),
      subject: encodeName({ commonName: "vault" }),
      spki,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 86_400_000),
      extensions: [
        ext.keyUsage(["digitalSignature", "keyEncipherment"]),
        ext.extKeyUsage(["serverAuth"]),
        ext.subjectAltName({ dns: ["localhost"], ips: ["127.0.0.1"] }),
        ext.authorityKeyIdentifier(keyIdentifier(spkiOf(ca.key))),
      ],
    },
    signerFor(ca.key),
  );
  return { cert: encodePem("CERTIFICATE", der), key: privateKeyToPem(privateKey), caPem: ca.pem };
}
