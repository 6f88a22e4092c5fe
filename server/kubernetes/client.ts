// A small Kubernetes API client over undici (DESIGN.md §7): the few kinds osm-cert uses, addressed
// generically by resource path, with resourceVersion-aware writes, typed errors a caller can branch
// on (reason, not message text) and bounded retries that never repeat a write which may have landed.

import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { createSecureContext, type SecureContext } from "node:tls";
import { Agent, type Dispatcher } from "undici";
import { parse as parseYaml } from "yaml";
import type { Logger } from "../../common/logger.js";
import { ExecCredentialError, ExecCredentialPlugin, ExecToken, parseExecConfig } from "./exec-credential.js";

// ---------------------------------------------------------------------------------------------
// API object shapes (only the fields osm-cert reads or writes; the server keeps the rest)

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: {
    apiVersion: string;
    kind: string;
    name: string;
    uid: string;
    controller?: boolean;
    blockOwnerDeletion?: boolean;
  }[];
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: ObjectMeta;
}

export interface Secret extends KubeObject {
  type?: string;
  /** Base64, as the API stores it. */
  data?: Record<string, string>;
  /** Write-only convenience: the API server merges it into `data` and never returns it. */
  stringData?: Record<string, string>;
  immutable?: boolean;
}

export interface ConfigMap extends KubeObject {
  data?: Record<string, string>;
  binaryData?: Record<string, string>;
  immutable?: boolean;
}

export interface Namespace extends KubeObject {
  spec?: { finalizers?: string[] };
  status?: { phase?: "Active" | "Terminating" };
}

export interface Lease extends KubeObject {
  spec?: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    /** MicroTime: RFC 3339 with microseconds, e.g. `2024-01-01T00:00:00.000000Z`. */
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

export interface UserInfo {
  username?: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

export interface TokenReview extends KubeObject {
  spec: { token: string; audiences?: string[] };
  status?: { authenticated?: boolean; user?: UserInfo; audiences?: string[]; error?: string };
}

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: { reason?: string; message?: string; field?: string }[];
  retryAfterSeconds?: number;
}

/** The API's error (and some success) body. */
export interface Status {
  kind: "Status";
  apiVersion: "v1";
  metadata: Record<string, unknown>;
  status?: "Success" | "Failure";
  message?: string;
  reason?: string;
  details?: StatusDetails;
  code?: number;
}

export interface ObjectList<T> {
  apiVersion?: string;
  kind?: string;
  metadata: { resourceVersion?: string; continue?: string; remainingItemCount?: number };
  items: T[];
}

export type WatchEvent<T> =
  | { type: "ADDED" | "MODIFIED" | "DELETED"; object: T }
  /** Progress only: the object carries nothing but `metadata.resourceVersion` to resume from. */
  | { type: "BOOKMARK"; object: KubeObject & { metadata: { resourceVersion: string } } };

// ---------------------------------------------------------------------------------------------
// Resource types: where a kind lives in the API. `T` ties each descriptor to its object shape.

export interface ResourceType<T extends KubeObject> {
  /** "" for the core group. */
  readonly group: string;
  readonly version: string;
  readonly plural: string;
  readonly kind: string;
  readonly namespaced: boolean;
  /** Never set; carries `T` so that `get(SECRETS, …)` returns a Secret. */
  readonly _object?: T;
}

export const SECRETS: ResourceType<Secret> = {
  group: "",
  version: "v1",
  plural: "secrets",
  kind: "Secret",
  namespaced: true,
};
export const CONFIG_MAPS: ResourceType<ConfigMap> = {
  group: "",
  version: "v1",
  plural: "configmaps",
  kind: "ConfigMap",
  namespaced: true,
};
export const NAMESPACES: ResourceType<Namespace> = {
  group: "",
  version: "v1",
  plural: "namespaces",
  kind: "Namespace",
  namespaced: false,
};
export const LEASES: ResourceType<Lease> = {
  group: "coordination.k8s.io",
  version: "v1",
  plural: "leases",
  kind: "Lease",
  namespaced: true,
};
export const TOKEN_REVIEWS: ResourceType<TokenReview> = {
  group: "authentication.k8s.io",
  version: "v1",
  plural: "tokenreviews",
  kind: "TokenReview",
  namespaced: false,
};

function apiVersionOf(type: ResourceType<KubeObject>): string {
  return type.group === "" ? type.version : `${type.group}/${type.version}`;
}

/** The name RBAC rules and API messages use: `secrets`, `leases.coordination.k8s.io`. */
function qualifiedResource(type: ResourceType<KubeObject>): string {
  return type.group === "" ? type.plural : `${type.plural}.${type.group}`;
}

// ---------------------------------------------------------------------------------------------
// Errors

/** RBAC verbs, which is also how requests are named in errors and logs. */
export type Verb = "get" | "list" | "watch" | "create" | "update" | "patch" | "delete";

/** The API server answered with an error status. Branch on `reason` (or `status`), not on `message`. */
export class KubeApiError extends Error {
  readonly code = "ERR_OSM_CERT_KUBE_API";
  constructor(
    message: string,
    /** HTTP status, or the Status object's `code` for errors delivered inside a watch stream. */
    readonly status: number,
    /** The Status object's reason: NotFound, AlreadyExists, Conflict, Expired, Gone, Forbidden, … */
    readonly reason: string,
    /** The Status object's own message, as the API server wrote it. */
    readonly statusMessage: string,
    readonly request: { verb: Verb; resource: string; namespace?: string; name?: string },
    readonly details?: StatusDetails,
    /** How long the server asked us to wait (Retry-After or details.retryAfterSeconds). */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "KubeApiError";
  }
}

/** No usable HTTP answer: connection refused or reset, TLS failure, timeout. */
export class KubeConnectionError extends Error {
  readonly code = "ERR_OSM_CERT_KUBE_CONNECTION";
  constructor(
    message: string,
    /** true only when the failure proves the request never reached the API server. */
    readonly notSent: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "KubeConnectionError";
  }
}

/** The in-cluster environment or kubeconfig cannot be used. */
export class KubeConfigError extends Error {
  readonly code = "ERR_OSM_CERT_KUBE_CONFIG";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "KubeConfigError";
  }
}

function hasReason(error: unknown, reasons: readonly string[]): error is KubeApiError {
  return error instanceof KubeApiError && reasons.includes(error.reason);
}
export const isNotFound = (error: unknown): error is KubeApiError =>
  error instanceof KubeApiError && error.status === 404;
export const isAlreadyExists = (error: unknown): error is KubeApiError => hasReason(error, ["AlreadyExists"]);
export const isConflict = (error: unknown): error is KubeApiError => hasReason(error, ["Conflict"]);
export const isForbidden = (error: unknown): error is KubeApiError =>
  error instanceof KubeApiError && error.status === 403;
/** The resourceVersion (or continue token) is older than the server keeps: re-list, then watch again. */
export const isGone = (error: unknown): error is KubeApiError =>
  error instanceof KubeApiError && (error.status === 410 || hasReason(error, ["Expired", "Gone"]));

// ---------------------------------------------------------------------------------------------
// Credentials and configuration

export interface TokenSource {
  describe(): string;
  /** The token to send now. */
  current(): Promise<string>;
  /** Called after a 401: re-read now, whatever the cache says. */
  refresh(): Promise<string>;
}

export class StaticToken implements TokenSource {
  constructor(
    private readonly token: string,
    private readonly origin: string,
  ) {}
  describe(): string {
    return `bearer token from ${this.origin}`;
  }
  async current(): Promise<string> {
    return this.token;
  }
  async refresh(): Promise<string> {
    return this.token;
  }
}

/**
 * A token file the kubelet rewrites (projected ServiceAccount tokens rotate well before they
 * expire). Re-read at most every `refreshMs`, and at once after a 401, so a rotation costs at most
 * one rejected request. A failed re-read keeps the last good token: the kubelet swaps the file
 * atomically, so a read error is transient and the old token is usually still valid for a while.
 */
export class FileToken implements TokenSource {
  private token: string | undefined;
  private readAt = Number.NEGATIVE_INFINITY;
  private reading: Promise<string> | undefined;

  constructor(
    readonly path: string,
    private readonly refreshMs = 10_000,
  ) {}

  describe(): string {
    return `bearer token file ${this.path}`;
  }

  current(): Promise<string> {
    if (this.token !== undefined && performance.now() - this.readAt < this.refreshMs) {
      return Promise.resolve(this.token);
    }
    return this.refresh();
  }

  refresh(): Promise<string> {
    this.reading ??= this.read().finally(() => {
      this.reading = undefined;
    });
    return this.reading;
  }

  private async read(): Promise<string> {
    try {
      const token = (await readFile(this.path, "utf8")).trim();
      if (token === "") throw new KubeConfigError(`${this.describe()} is empty`);
      this.token = token;
      this.readAt = performance.now();
      return token;
    } catch (error) {
      if (this.token !== undefined) return this.token;
      if (error instanceof KubeConfigError) throw error;
      throw new KubeConfigError(`cannot read ${this.describe()}: ${errorText(error)}`, { cause: error });
    }
  }
}

export interface KubeConfig {
  /** `https://host:port`, possibly with a path prefix (API proxies). */
  readonly server: string;
  /** PEM bundle the API server's certificate must chain to; undefined means Node's default CAs. */
  readonly caPem?: string;
  /** The name to verify on the server's certificate when it differs from the host. */
  readonly tlsServerName?: string;
  readonly clientCertificate?: { readonly certPem: string; readonly keyPem: string };
  /** An exec plugin that answers with client certificates: asked again on expiry and after a 401. */
  readonly clientCertificatePlugin?: ExecCredentialPlugin;
  readonly token?: TokenSource;
  /** The pod's namespace in-cluster, or the kubeconfig context's (default "default"). */
  readonly namespace: string;
  /** For messages: where this configuration came from. */
  readonly source: string;
}

export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

export interface InClusterOptions {
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Where the ServiceAccount volume is mounted; tests point it at a temp directory. */
  readonly serviceAccountDir?: string;
  readonly tokenRefreshMs?: number;
}

/** The pod's own credentials, as every in-cluster client finds them. */
export async function inClusterConfig(options: InClusterOptions = {}): Promise<KubeConfig> {
  const env = options.env ?? process.env;
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new KubeConfigError(
      "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset); pass --kubeconfig",
    );
  }
  const dir = options.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const caPath = resolve(dir, "ca.crt");
  const caPem = await readText(caPath, "the in-cluster CA");
  let namespace = "default";
  try {
    namespace = (await readFile(resolve(dir, "namespace"), "utf8")).trim() || "default";
  } catch {
    // Older or hand-built pods may lack it; the namespace is informational for us.
  }
  const token = new FileToken(resolve(dir, "token"), options.tokenRefreshMs);
  // Fail at start-up, not on the first request, when the token volume is missing.
  await token.current();
  const hostPart = host.includes(":") ? `[${host}]` : host;
  return {
    server: `https://${hostPart}:${port}`,
    caPem,
    token,
    namespace,
    source: `in-cluster service account (${dir})`,
  };
}

export interface KubeconfigOptions {
  /** Overrides the file's current-context. */
  readonly context?: string;
  readonly tokenRefreshMs?: number;
}

/**
 * A kubeconfig for running outside the cluster. Only the JSON form is read (kubectl accepts it, and
 * `kubectl config view --raw --flatten -o json` writes it); YAML needs a parser we do not ship yet.
 */
export async function loadKubeconfig(path: string, options: KubeconfigOptions = {}): Promise<KubeConfig> {
  const text = await readText(path, "kubeconfig");
  let doc: unknown;
  try {
    // kubectl writes YAML; YAML 1.2 is a superset of JSON, so both forms parse here.
    doc = parseYaml(text, { schema: "core", maxAliasCount: 100 });
  } catch (error) {
    throw new KubeConfigError(`kubeconfig ${path} is neither valid YAML nor JSON: ${errorText(error)}`);
  }
  const base = dirname(resolve(path));
  const where = `kubeconfig ${path}`;
  const root = asRecord(doc, where);
  const contextName = options.context ?? optionalString(root["current-context"], `${where}: current-context`);
  if (!contextName) throw new KubeConfigError(`${where}: no current-context set and no context chosen`);
  const context = asRecord(namedEntry(root.contexts, contextName, "context", where), `${where}: context`);
  const clusterName = requiredString(context.cluster, `${where}: context "${contextName}" cluster`);
  const userName = optionalString(context.user, `${where}: context "${contextName}" user`);
  const cluster = asRecord(namedEntry(root.clusters, clusterName, "cluster", where), `${where}: cluster`);
  const clusterWhere = `${where}: cluster "${clusterName}"`;

  const server = requiredString(cluster.server, `${clusterWhere} server`).replace(/\/+$/, "");
  if (!server.startsWith("https://")) {
    throw new KubeConfigError(
      `${clusterWhere}: server ${server} is not https; osm-cert only talks TLS to the API`,
    );
  }
  if (cluster["insecure-skip-tls-verify"] === true) {
    throw new KubeConfigError(
      `${clusterWhere}: insecure-skip-tls-verify is set; osm-cert keeps the mesh CA in this cluster and will not talk to an unverified API server`,
    );
  }
  if (cluster["proxy-url"] !== undefined)
    throw new KubeConfigError(`${clusterWhere}: proxy-url is not supported`);
  const caPem = await pemField(cluster, "certificate-authority", base, clusterWhere);
  const tlsServerName = optionalString(cluster["tls-server-name"], `${clusterWhere} tls-server-name`);

  let token: TokenSource | undefined;
  let clientCertificate: KubeConfig["clientCertificate"];
  let clientCertificatePlugin: ExecCredentialPlugin | undefined;
  if (userName) {
    const user = asRecord(namedEntry(root.users, userName, "user", where), `${where}: user`);
    const userWhere = `${where}: user "${userName}"`;
    for (const unsupported of ["auth-provider", "username", "password", "as"]) {
      if (user[unsupported] !== undefined) {
        throw new KubeConfigError(
          `${userWhere}: "${unsupported}" credentials are not supported; use a token, tokenFile or client certificate`,
        );
      }
    }
    const staticToken = optionalString(user.token, `${userWhere} token`);
    const tokenFile = optionalString(user.tokenFile, `${userWhere} tokenFile`);
    if (staticToken) token = new StaticToken(staticToken, where);
    else if (tokenFile) {
      token = new FileToken(resolve(base, tokenFile), options.tokenRefreshMs);
      await token.current();
    }
    const certPem = await pemField(user, "client-certificate", base, userWhere);
    const keyPem = await pemField(user, "client-key", base, userWhere);
    if ((certPem === undefined) !== (keyPem === undefined)) {
      throw new KubeConfigError(`${userWhere}: client-certificate and client-key must be given together`);
    }
    if (certPem !== undefined && keyPem !== undefined) clientCertificate = { certPem, keyPem };
    if (user.exec !== undefined) {
      if (token !== undefined || clientCertificate !== undefined) {
        throw new KubeConfigError(`${userWhere}: exec cannot be combined with a token or client certificate`);
      }
      try {
        const plugin = new ExecCredentialPlugin(
          parseExecConfig(user.exec, {
            base,
            where: userWhere,
            cluster: { server, caPem, tlsServerName, config: execExtension(cluster.extensions) },
          }),
        );
        // Run it now: a plugin that cannot answer fails the command at once, with its own words.
        const first = await plugin.credential();
        if (first.token !== undefined) token = new ExecToken(plugin);
        if (first.clientCertificate !== undefined) {
          clientCertificate = first.clientCertificate;
          clientCertificatePlugin = plugin;
        }
      } catch (error) {
        if (error instanceof ExecCredentialError) throw new KubeConfigError(error.message, { cause: error });
        throw error;
      }
    }
  }
  const namespace = optionalString(context.namespace, `${where}: context namespace`) || "default";
  return {
    server,
    ...(caPem === undefined ? {} : { caPem }),
    ...(tlsServerName ? { tlsServerName } : {}),
    ...(clientCertificate ? { clientCertificate } : {}),
    ...(clientCertificatePlugin ? { clientCertificatePlugin } : {}),
    ...(token ? { token } : {}),
    namespace,
    source: `${where} (context "${contextName}")`,
  };
}

/** A cluster's `extensions` entry named client.authentication.k8s.io/exec (spec.cluster.config). */
function execExtension(extensions: unknown): unknown {
  if (!Array.isArray(extensions)) return undefined;
  const entry = extensions.find(
    (e) =>
      typeof e === "object" &&
      e !== null &&
      (e as { name?: unknown }).name === "client.authentication.k8s.io/exec",
  ) as { extension?: unknown } | undefined;
  return entry?.extension;
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    throw new KubeConfigError(`cannot read ${what} ${path}: ${errorText(error)}`, { cause: error });
  }
}

/** `<field>-data` (base64 PEM) or `<field>` (a path, relative to the kubeconfig's directory). */
async function pemField(
  entry: Record<string, unknown>,
  field: string,
  base: string,
  where: string,
): Promise<string | undefined> {
  const data = optionalString(entry[`${field}-data`], `${where} ${field}-data`);
  if (data) return Buffer.from(data, "base64").toString("utf8");
  const path = optionalString(entry[field], `${where} ${field}`);
  return path ? readText(resolve(base, path), `${where} ${field}`) : undefined;
}

function namedEntry(list: unknown, name: string, what: string, where: string): unknown {
  if (Array.isArray(list)) {
    for (const item of list) {
      if (typeof item === "object" && item !== null && (item as Record<string, unknown>).name === name) {
        return (item as Record<string, unknown>)[what];
      }
    }
  }
  throw new KubeConfigError(`${where}: no ${what} named "${name}"`);
}

function asRecord(value: unknown, where: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new KubeConfigError(`${where} is not an object`);
  }
  return value as Record<string, unknown>;
}

function optionalString(value: unknown, where: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw new KubeConfigError(`${where} is not a string`);
  return value;
}

function requiredString(value: unknown, where: string): string {
  const text = optionalString(value, where);
  if (!text) throw new KubeConfigError(`${where} is missing`);
  return text;
}

// ---------------------------------------------------------------------------------------------
// The client

export interface RetryPolicy {
  /** Total attempts, the first included. */
  readonly maxAttempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /** A Retry-After longer than this is cut short: a caller blocked for minutes is worse than an error. */
  readonly maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  maxAttempts: 5,
  baseDelayMs: 200,
  maxDelayMs: 5_000,
  maxRetryAfterMs: 30_000,
};

export interface KubeClientOptions {
  readonly config: KubeConfig;
  readonly logger?: Logger;
  readonly retry?: Partial<RetryPolicy>;
  /** Per attempt, for everything but watches. */
  readonly requestTimeoutMs?: number;
  readonly userAgent?: string;
}

export interface CallOptions {
  readonly signal?: AbortSignal;
  /** Overrides the client's retry policy for this call (1 = no retry). */
  readonly maxAttempts?: number;
}

export interface ObjectRef extends CallOptions {
  /** Required for namespaced kinds. */
  readonly namespace?: string;
}

export interface CreateOptions extends ObjectRef {
  /**
   * The caller treats AlreadyExists as success (create-if-absent), so a create that may have
   * reached the server can be repeated safely; without this, only provably unsent creates retry.
   */
  readonly idempotent?: boolean;
}

export interface DeleteOptions extends ObjectRef {
  readonly preconditions?: { readonly resourceVersion?: string; readonly uid?: string };
}

export interface ListOptions extends CallOptions {
  /** Omit for all namespaces. */
  readonly namespace?: string;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  /** "0" accepts any cached state; a version asks for a state at least that new. */
  readonly resourceVersion?: string;
  /** Page size; pages are fetched until the list is complete. */
  readonly limit?: number;
}

export interface WatchOptions {
  readonly namespace?: string;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  /** Resume after this version (from a list or the last event); omitted: current state as ADDED, then changes. */
  readonly resourceVersion?: string;
  /** The server ends the stream after this long; default 5–10 min, spread so replicas do not re-watch in step. */
  readonly timeoutSeconds?: number;
  /** Aborting ends the iteration quietly. */
  readonly signal?: AbortSignal;
  readonly maxAttempts?: number;
}

type RetryMode = "idempotent" | "unsent-only";
type SendOutcome = { stream: Dispatcher.ResponseData } | { value: unknown };

interface RequestSpec {
  readonly verb: Verb;
  readonly method: Dispatcher.HttpMethod;
  readonly type: ResourceType<KubeObject>;
  readonly namespace?: string;
  readonly name?: string;
  readonly query?: URLSearchParams;
  readonly body?: unknown;
  readonly contentType?: string;
  readonly retry: RetryMode;
  readonly signal?: AbortSignal;
  readonly maxAttempts?: number;
  /** Streaming responses (watch): no body timeout beyond `streamTimeoutMs`, body left unread. */
  readonly streamTimeoutMs?: number;
}

// Failures before any byte left: the server cannot have acted on the request.
const NOT_SENT_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);
// Failures after the request may have been sent: worth another try only when repeating is harmless.
const TRANSIENT_CODES = new Set([
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
]);
const RETRYABLE_STATUS = new Set([429, 500, 502, 503, 504]);
const DEFAULT_REASON: Record<number, string> = {
  400: "BadRequest",
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  405: "MethodNotAllowed",
  409: "Conflict",
  410: "Gone",
  413: "RequestEntityTooLarge",
  415: "UnsupportedMediaType",
  422: "Invalid",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable",
  504: "Timeout",
};

export class KubeClient {
  readonly config: KubeConfig;
  private agent: Agent;
  private clientCertificate: KubeConfig["clientCertificate"];
  private readonly origin: string;
  private readonly pathPrefix: string;
  private readonly retry: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly userAgent: string;

  constructor(options: KubeClientOptions) {
    this.config = options.config;
    const url = new URL(options.config.server);
    this.origin = url.origin;
    this.pathPrefix = url.pathname.replace(/\/+$/, "");
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.timeoutMs = options.requestTimeoutMs ?? 30_000;
    this.logger = options.logger;
    this.userAgent = options.userAgent ?? "osm-cert";
    this.clientCertificate = options.config.clientCertificate;
    this.agent = this.makeAgent();
  }

  private makeAgent(): Agent {
    const tls = this.config;
    const certificate = this.clientCertificate;
    const material = {
      ...(tls.caPem === undefined ? {} : { ca: tls.caPem }),
      ...(certificate ? { cert: certificate.certPem, key: certificate.keyPem } : {}),
    };
    // One SecureContext for every connection: given only `ca`, node:tls parses the CA (and key)
    // into a new one per connection, ≈ 1 ms each, and a token storm opens many (one TokenReview
    // in flight per connection). Material it cannot parse keeps failing per connection, as before.
    let context: { secureContext: SecureContext } | typeof material;
    try {
      context = { secureContext: createSecureContext(material) };
    } catch {
      context = material;
    }
    return new Agent({
      connect: {
        ...context,
        ...(tls.tlsServerName ? { servername: tls.tlsServerName } : {}),
        timeout: 10_000,
      },
    });
  }

  /**
   * With an exec plugin that answers with certificates: take its current (or, `fresh`, a newly
   * fetched) certificate; a changed one gets new connections. Returns whether it changed.
   */
  private async syncClientCertificate(fresh: boolean): Promise<boolean> {
    const plugin = this.config.clientCertificatePlugin;
    if (plugin === undefined) return false;
    const credential = fresh ? await plugin.refresh() : await plugin.credential();
    const next = credential.clientCertificate;
    if (next === undefined || next.certPem === this.clientCertificate?.certPem) return false;
    this.clientCertificate = next;
    const old = this.agent;
    this.agent = this.makeAgent();
    // Requests in flight (a watch) finish on the old connections; nothing new goes there.
    void old.close().catch(() => undefined);
    this.logger?.info(
      { event: "kube_client_certificate_reloaded", source: plugin.describe() },
      "client certificate rotated",
    );
    return true;
  }

  async get<T extends KubeObject>(type: ResourceType<T>, name: string, options: ObjectRef = {}): Promise<T> {
    return this.json<T>({
      verb: "get",
      method: "GET",
      type,
      namespace: this.namespaceFor(type, options.namespace),
      name,
      retry: "idempotent",
      ...callOptions(options),
    });
  }

  async create<T extends KubeObject>(
    type: ResourceType<T>,
    object: T,
    options: CreateOptions = {},
  ): Promise<T> {
    return this.json<T>({
      verb: "create",
      method: "POST",
      type,
      namespace: this.namespaceFor(type, options.namespace ?? object.metadata?.namespace),
      body: withTypeMeta(type, object),
      retry: options.idempotent === true ? "idempotent" : "unsent-only",
      ...callOptions(options),
    });
  }

  /**
   * PUT. With `metadata.resourceVersion` set (as it is on anything read back), the write happens
   * only if nobody changed the object since: otherwise a Conflict error. A retried PUT whose first
   * attempt landed also reports Conflict; re-read and compare before giving up.
   */
  async update<T extends KubeObject>(type: ResourceType<T>, object: T, options: ObjectRef = {}): Promise<T> {
    const name = object.metadata?.name;
    if (!name) throw new TypeError(`update of ${type.plural} needs metadata.name`);
    return this.json<T>({
      verb: "update",
      method: "PUT",
      type,
      namespace: this.namespaceFor(type, options.namespace ?? object.metadata?.namespace),
      name,
      body: withTypeMeta(type, object),
      retry: "idempotent",
      ...callOptions(options),
    });
  }

  /** JSON merge patch (RFC 7386): null deletes a key. Applying the same patch twice is harmless, so it retries. */
  async patch<T extends KubeObject>(
    type: ResourceType<T>,
    name: string,
    patch: Record<string, unknown>,
    options: ObjectRef = {},
  ): Promise<T> {
    return this.json<T>({
      verb: "patch",
      method: "PATCH",
      type,
      namespace: this.namespaceFor(type, options.namespace),
      name,
      body: patch,
      contentType: "application/merge-patch+json",
      retry: "idempotent",
      ...callOptions(options),
    });
  }

  /** A retried delete that finds the object gone after an ambiguous failure counts as done. */
  async delete<T extends KubeObject>(
    type: ResourceType<T>,
    name: string,
    options: DeleteOptions = {},
  ): Promise<void> {
    await this.json<Status | T>({
      verb: "delete",
      method: "DELETE",
      type,
      namespace: this.namespaceFor(type, options.namespace),
      name,
      body: {
        kind: "DeleteOptions",
        apiVersion: "v1",
        ...(options.preconditions ? { preconditions: options.preconditions } : {}),
      },
      retry: "idempotent",
      ...callOptions(options),
    });
  }

  async list<T extends KubeObject>(type: ResourceType<T>, options: ListOptions = {}): Promise<ObjectList<T>> {
    if (options.namespace !== undefined && !type.namespaced) {
      throw new TypeError(`${type.plural} are not namespaced`);
    }
    const query = new URLSearchParams();
    if (options.labelSelector) query.set("labelSelector", options.labelSelector);
    if (options.fieldSelector) query.set("fieldSelector", options.fieldSelector);
    if (options.resourceVersion !== undefined) query.set("resourceVersion", options.resourceVersion);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    const spec = {
      verb: "list",
      method: "GET",
      type,
      namespace: options.namespace,
      retry: "idempotent",
      ...callOptions(options),
    } as const;
    const first = await this.json<ObjectList<T>>({ ...spec, query });
    first.items ??= [];
    // Later pages come from the snapshot the first one started, so the list stays consistent and its
    // resourceVersion is a valid place to start a watch. An expired continue token is a 410 (isGone).
    let next = first.metadata.continue;
    while (next) {
      const page = new URLSearchParams(query);
      page.delete("resourceVersion");
      page.set("continue", next);
      const more = await this.json<ObjectList<T>>({ ...spec, query: page });
      first.items.push(...(more.items ?? []));
      next = more.metadata.continue;
    }
    delete first.metadata.continue;
    delete first.metadata.remainingItemCount;
    return first;
  }

  /**
   * Streams changes. Ends normally when the server closes the stream (timeoutSeconds): watch again
   * from the last resourceVersion seen. Throws KubeApiError for an ERROR event — `isGone(error)`
   * means that version is no longer kept: list again and watch from the list's resourceVersion —
   * and KubeConnectionError when the stream breaks.
   */
  async *watch<T extends KubeObject>(
    type: ResourceType<T>,
    options: WatchOptions = {},
  ): AsyncGenerator<WatchEvent<T>> {
    const timeoutSeconds = options.timeoutSeconds ?? 300 + Math.floor(Math.random() * 300);
    const query = new URLSearchParams({
      watch: "1",
      allowWatchBookmarks: "true",
      timeoutSeconds: String(timeoutSeconds),
    });
    if (options.resourceVersion !== undefined) query.set("resourceVersion", options.resourceVersion);
    if (options.labelSelector) query.set("labelSelector", options.labelSelector);
    if (options.fieldSelector) query.set("fieldSelector", options.fieldSelector);
    const spec: RequestSpec = {
      verb: "watch",
      method: "GET",
      type,
      namespace: options.namespace,
      query,
      retry: "idempotent",
      // The server promises to end the stream by then; silence well past it means a dead connection.
      streamTimeoutMs: (timeoutSeconds + 30) * 1000,
      ...callOptions(options),
    };
    let outcome: SendOutcome;
    try {
      outcome = await this.send(spec);
    } catch (error) {
      if (options.signal?.aborted) return;
      throw error;
    }
    if (!("stream" in outcome)) throw new TypeError("watch expected a stream");
    const body = outcome.stream.body;
    body.setEncoding("utf8");
    let buffered = "";
    try {
      for await (const chunk of body as AsyncIterable<string>) {
        buffered += chunk;
        let newline = buffered.indexOf("\n");
        while (newline >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (line !== "") yield this.watchEvent<T>(spec, line);
          newline = buffered.indexOf("\n");
        }
      }
      if (buffered.trim() !== "") yield this.watchEvent<T>(spec, buffered.trim());
    } catch (error) {
      if (options.signal?.aborted) return;
      if (error instanceof KubeApiError) throw error;
      throw new KubeConnectionError(
        `watch of ${describeTarget(spec)} broke off: ${errorText(error)}; watch again from the last resourceVersion`,
        false,
        { cause: error },
      );
    } finally {
      if (!body.destroyed) body.destroy();
    }
  }

  async close(): Promise<void> {
    await this.agent.close();
  }

  private watchEvent<T extends KubeObject>(spec: RequestSpec, line: string): WatchEvent<T> {
    let event: { type?: unknown; object?: unknown };
    try {
      event = JSON.parse(line) as { type?: unknown; object?: unknown };
    } catch (error) {
      throw new KubeConnectionError(
        `watch of ${describeTarget(spec)} sent a malformed event: ${errorText(error)}`,
        false,
      );
    }
    switch (event.type) {
      case "ADDED":
      case "MODIFIED":
      case "DELETED":
      case "BOOKMARK":
        return event as WatchEvent<T>;
      case "ERROR": {
        const status = isStatus(event.object) ? event.object : undefined;
        throw this.apiError(spec, status?.code ?? 500, status, undefined, JSON.stringify(event.object));
      }
      default:
        throw new KubeConnectionError(
          `watch of ${describeTarget(spec)} sent an unknown event type ${JSON.stringify(event.type)}`,
          false,
        );
    }
  }

  private namespaceFor(type: ResourceType<KubeObject>, namespace: string | undefined): string | undefined {
    if (type.namespaced && !namespace) throw new TypeError(`${type.plural} are namespaced: pass a namespace`);
    if (!type.namespaced && namespace) throw new TypeError(`${type.plural} are not namespaced`);
    return namespace;
  }

  private path(spec: RequestSpec): string {
    const { type } = spec;
    let path = type.group === "" ? `/api/${type.version}` : `/apis/${type.group}/${type.version}`;
    if (spec.namespace) path += `/namespaces/${encodeURIComponent(spec.namespace)}`;
    path += `/${type.plural}`;
    if (spec.name !== undefined) path += `/${encodeURIComponent(spec.name)}`;
    const query = spec.query?.toString();
    return `${this.pathPrefix}${path}${query ? `?${query}` : ""}`;
  }

  private async json<T>(spec: RequestSpec): Promise<T> {
    const outcome = await this.send(spec);
    // The API server is trusted for the shape of its own objects.
    if ("value" in outcome) return outcome.value as T;
    outcome.stream.body.destroy();
    throw new TypeError("json() called with a streaming request");
  }

  /**
   * One logical request: retried under the policy, re-authenticated once after a 401 when the token
   * changed. Streaming specs get the open response, the others the parsed body.
   */
  private async send(spec: RequestSpec): Promise<SendOutcome> {
    const maxAttempts = Math.max(1, spec.maxAttempts ?? this.retry.maxAttempts);
    const path = this.path(spec);
    const body = spec.body === undefined ? undefined : JSON.stringify(spec.body);
    let reauthenticated = false;
    // Set once an attempt failed in a way that may have left the change made.
    let maybeApplied = false;
    let token: string | undefined;
    for (let attempt = 1; ; attempt++) {
      spec.signal?.throwIfAborted();
      token = this.config.token === undefined ? undefined : await this.config.token.current();
      await this.syncClientCertificate(false);
      const headers: Record<string, string> = { accept: "application/json", "user-agent": this.userAgent };
      if (token !== undefined) headers.authorization = `Bearer ${token}`;
      if (body !== undefined) headers["content-type"] = spec.contentType ?? "application/json";
      let status: number;
      let responseHeaders: Dispatcher.ResponseData["headers"];
      let text: string;
      try {
        const response = await this.agent.request({
          origin: this.origin,
          path,
          method: spec.method,
          headers,
          body: body ?? null,
          signal: spec.signal ?? null,
          headersTimeout: this.timeoutMs,
          bodyTimeout: spec.streamTimeoutMs ?? this.timeoutMs,
          // undici closes a connection after a DELETE that carried a body, unless told the server
          // expects one; the API server does (DeleteOptions), and a storm deletes once per CSR.
          ...(spec.method === "DELETE" ? { reset: false } : {}),
        });
        status = response.statusCode;
        responseHeaders = response.headers;
        if (status >= 200 && status < 300) {
          if (spec.streamTimeoutMs !== undefined) return { stream: response };
          text = await response.body.text();
          return { value: parseJson(text, spec, status) };
        }
        text = await response.body.text();
      } catch (error) {
        if (spec.signal?.aborted) throw spec.signal.reason;
        if (error instanceof KubeApiError) throw error;
        const failure = this.connectionError(spec, error);
        const retryable = isTransient(error) && (spec.retry === "idempotent" || failure.notSent);
        if (!retryable || attempt >= maxAttempts) throw failure;
        maybeApplied ||= !failure.notSent;
        await this.backoff(spec, attempt, undefined, failure.message);
        continue;
      }

      // The object is gone, which is what the delete wanted; most likely our own earlier attempt did it.
      if (status === 404 && spec.verb === "delete" && maybeApplied) return { value: undefined };
      const statusObject = parseStatus(text);
      const error = this.apiError(spec, status, statusObject, responseHeaders, text);
      if (status === 401 && !reauthenticated && this.config.clientCertificatePlugin !== undefined) {
        reauthenticated = true;
        if (await this.syncClientCertificate(true)) {
          attempt--;
          continue;
        }
      }
      if (status === 401 && !reauthenticated && this.config.token !== undefined) {
        reauthenticated = true;
        const fresh = await this.config.token.refresh();
        if (fresh !== token) {
          this.logger?.info(
            { event: "kube_token_reloaded", source: this.config.token.describe() },
            "token rotated",
          );
          attempt--;
          continue;
        }
      }
      // 429 comes from admission before the request is acted on, so even a create may repeat it.
      const retryable = status === 429 || (RETRYABLE_STATUS.has(status) && spec.retry === "idempotent");
      if (!retryable || attempt >= maxAttempts) throw error;
      maybeApplied ||= status >= 500;
      await this.backoff(spec, attempt, error.retryAfterMs, error.message);
    }
  }

  private async backoff(
    spec: RequestSpec,
    attempt: number,
    retryAfterMs: number | undefined,
    why: string,
  ): Promise<void> {
    const exponential = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** (attempt - 1));
    // Equal jitter: never less than half the step, so a herd of replicas spreads out but still backs off.
    const jittered = exponential / 2 + Math.random() * (exponential / 2);
    const delayMs =
      retryAfterMs === undefined ? jittered : Math.min(retryAfterMs, this.retry.maxRetryAfterMs);
    this.logger?.warn(
      {
        event: "kube_retry",
        verb: spec.verb,
        resource: qualifiedResource(spec.type),
        ...(spec.namespace ? { namespace: spec.namespace } : {}),
        attempt,
        delayMs: Math.round(delayMs),
        error: why,
      },
      "retrying a Kubernetes API request",
    );
    await sleep(delayMs, undefined, spec.signal ? { signal: spec.signal } : undefined);
  }

  private connectionError(spec: RequestSpec, error: unknown): KubeConnectionError {
    const code = errorCode(error);
    const notSent = code !== undefined && NOT_SENT_CODES.has(code);
    let message = `${spec.verb} ${describeTarget(spec)}: cannot reach the API server at ${this.config.server}: ${errorText(error)}`;
    if (code !== undefined && isTlsVerificationCode(code)) {
      message += ` (the API server's certificate does not verify against the CA from ${this.config.source})`;
    }
    return new KubeConnectionError(message, notSent, { cause: error });
  }

  private apiError(
    spec: RequestSpec,
    status: number,
    statusObject: Status | undefined,
    headers: Dispatcher.ResponseData["headers"] | undefined,
    text: string,
  ): KubeApiError {
    const reason = statusObject?.reason || DEFAULT_REASON[status] || `HTTP${status}`;
    const statusMessage = statusObject?.message ?? (text.trim().slice(0, 200) || `HTTP ${status}`);
    const resource = qualifiedResource(spec.type);
    let message = statusMessage;
    if (status === 403) {
      const name = spec.name === undefined ? "" : ` "${spec.name}"`;
      const scope = spec.namespace ? `in namespace ${spec.namespace}` : "at cluster scope";
      const group = spec.type.group === "" ? "" : ` in API group "${spec.type.group}"`;
      message = `forbidden: cannot ${spec.verb} ${spec.type.plural}${name} ${scope} (RBAC: grant "${spec.verb}" on "${spec.type.plural}"${group})`;
    } else if (status === 401) {
      const credential = this.config.token?.describe() ?? "client certificate";
      message = `unauthorized: the API server at ${this.config.server} rejected our credentials (${credential}, from ${this.config.source})`;
    } else if (statusObject === undefined) {
      message = `${spec.verb} ${describeTarget(spec)}: HTTP ${status}: ${statusMessage}`;
    } else if (status >= 500 || status === 429) {
      // The API's own words ("the server is currently unable to handle the request") do not say
      // which server, nor what we were doing: a start-up line or a log must name both.
      message = `${spec.verb} ${describeTarget(spec)}: the API server at ${this.config.server} answered ${status} ${reason}: ${statusMessage}`;
    }
    return new KubeApiError(
      message,
      status,
      reason,
      statusMessage,
      {
        verb: spec.verb,
        resource,
        ...(spec.namespace ? { namespace: spec.namespace } : {}),
        ...(spec.name !== undefined ? { name: spec.name } : {}),
      },
      statusObject?.details,
      retryAfter(headers, statusObject),
    );
  }
}

function callOptions(options: CallOptions): CallOptions {
  return {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.maxAttempts !== undefined ? { maxAttempts: options.maxAttempts } : {}),
  };
}

function withTypeMeta<T extends KubeObject>(type: ResourceType<T>, object: T): T {
  return { ...object, apiVersion: apiVersionOf(type), kind: type.kind };
}

function describeTarget(spec: RequestSpec): string {
  const resource = qualifiedResource(spec.type);
  const where = spec.namespace ? ` in namespace ${spec.namespace}` : "";
  return spec.name === undefined ? `${resource}${where}` : `${resource} "${spec.name}"${where}`;
}

function parseJson(text: string, spec: RequestSpec, status: number): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new KubeApiError(
      `${spec.verb} ${describeTarget(spec)}: the API server answered ${status} with a body that is not JSON (${errorText(error)})`,
      status,
      "InvalidResponse",
      text.slice(0, 200),
      { verb: spec.verb, resource: qualifiedResource(spec.type) },
    );
  }
}

function isStatus(value: unknown): value is Status {
  return typeof value === "object" && value !== null && (value as { kind?: unknown }).kind === "Status";
}

function parseStatus(text: string): Status | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return isStatus(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

function retryAfter(
  headers: Dispatcher.ResponseData["headers"] | undefined,
  status: Status | undefined,
): number | undefined {
  const header = headers?.["retry-after"];
  const value = Array.isArray(header) ? header[0] : header;
  if (value !== undefined) {
    const seconds = Number(value);
    if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
    const date = Date.parse(value);
    if (!Number.isNaN(date)) return Math.max(0, date - Date.now());
  }
  const seconds = status?.details?.retryAfterSeconds;
  return typeof seconds === "number" && seconds >= 0 ? seconds * 1000 : undefined;
}

function errorCode(error: unknown): string | undefined {
  for (let current: unknown = error, depth = 0; current instanceof Error && depth < 4; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string") return code;
    current = current.cause;
  }
  return undefined;
}

function isTransient(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && (NOT_SENT_CODES.has(code) || TRANSIENT_CODES.has(code));
}

function isTlsVerificationCode(code: string): boolean {
  return (
    code.startsWith("ERR_TLS_") ||
    code.includes("CERT") ||
    code === "UNABLE_TO_VERIFY_LEAF_SIGNATURE" ||
    code === "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"
  );
}

function errorText(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = errorCode(error);
  const text = error.message || error.name;
  return code !== undefined && !text.includes(code) ? `${text} (${code})` : text;
}
