// Exec credential plugins in kubeconfigs (client.authentication.k8s.io v1 and v1beta1), as EKS
// (`aws eks get-token`), GKE (`gke-gcloud-auth-plugin`) and AKS (`kubelogin`) kubeconfigs use, so the
// operator commands run with the kubeconfigs operators really have. The plugin is run as client-go
// runs it: command + args, the kubeconfig's env on top of ours, KUBERNETES_EXEC_INFO holding an
// ExecCredential with spec.interactive (and spec.cluster when provideClusterInfo is set), stdin only
// when interactive, its stderr passed through to ours. Its answer (status.token, or
// clientCertificateData + clientKeyData) is cached until expirationTimestamp and fetched again
// after a 401.

import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { resolve } from "node:path";

export const EXEC_API_VERSIONS = ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"];
/** Fetch a new credential this long before the plugin says the old one expires. */
const EXPIRY_SLACK_MS = 10_000;
/** A plugin that answers nothing within this long (and is not asking the user) is stuck. */
const TIMEOUT_MS = 60_000;
const MAX_OUTPUT_BYTES = 1024 * 1024;
const STDERR_TAIL_BYTES = 2048;

export class ExecCredentialError extends Error {
  readonly code = "ERR_OSM_CERT_EXEC_CREDENTIAL";
}

export type InteractiveMode = "Never" | "IfAvailable" | "Always";

export interface ExecPluginConfig {
  readonly apiVersion: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  readonly interactiveMode: InteractiveMode;
  readonly installHint?: string;
  /** spec.cluster for KUBERNETES_EXEC_INFO; present only when provideClusterInfo is true. */
  readonly cluster?: Readonly<Record<string, unknown>>;
  /** For messages: the kubeconfig user this belongs to. */
  readonly where: string;
}

export interface ExecCredential {
  readonly token?: string;
  readonly clientCertificate?: { readonly certPem: string; readonly keyPem: string };
  /** ms since the epoch; null: valid until the server refuses it. */
  readonly expiresAt: number | null;
}

/** What loadKubeconfig passes for a cluster: what spec.cluster may carry. */
export interface ClusterInfo {
  readonly server: string;
  readonly caPem?: string;
  readonly tlsServerName?: string;
  /** The cluster's extensions["client.authentication.k8s.io/exec"]. */
  readonly config?: unknown;
}

/** Reads a kubeconfig `user.exec` stanza; a relative command with a slash is relative to the kubeconfig. */
export function parseExecConfig(
  value: unknown,
  options: { base: string; where: string; cluster: ClusterInfo },
): ExecPluginConfig {
  const { where } = options;
  if (typeof value !== "object" || value === null)
    throw new ExecCredentialError(`${where} exec is not an object`);
  const exec = value as Record<string, unknown>;
  const apiVersion = exec.apiVersion;
  if (typeof apiVersion !== "string" || !EXEC_API_VERSIONS.includes(apiVersion)) {
    throw new ExecCredentialError(
      `${where} exec apiVersion ${JSON.stringify(apiVersion)} is not supported; use ${EXEC_API_VERSIONS.join(" or ")}`,
    );
  }
  const command = exec.command;
  if (typeof command !== "string" || command === "")
    throw new ExecCredentialError(`${where} exec command is missing`);
  const args = exec.args ?? [];
  if (!Array.isArray(args) || !args.every((a) => typeof a === "string")) {
    throw new ExecCredentialError(`${where} exec args must be a list of strings`);
  }
  const env: Record<string, string> = {};
  const envList = exec.env ?? [];
  if (!Array.isArray(envList))
    throw new ExecCredentialError(`${where} exec env must be a list of {name, value}`);
  for (const entry of envList) {
    const e = (entry ?? {}) as Record<string, unknown>;
    if (typeof e.name !== "string" || e.name === "" || typeof e.value !== "string") {
      throw new ExecCredentialError(`${where} exec env entries need a name and a string value`);
    }
    env[e.name] = e.value;
  }
  let interactiveMode = exec.interactiveMode;
  // v1 makes the plugin say; v1beta1 defaults to IfAvailable, as client-go does.
  if (interactiveMode === undefined && apiVersion.endsWith("/v1beta1")) interactiveMode = "IfAvailable";
  if (interactiveMode !== "Never" && interactiveMode !== "IfAvailable" && interactiveMode !== "Always") {
    throw new ExecCredentialError(
      `${where} exec interactiveMode must be Never, IfAvailable or Always (required for ${apiVersion})`,
    );
  }
  if (exec.provideClusterInfo !== undefined && typeof exec.provideClusterInfo !== "boolean") {
    throw new ExecCredentialError(`${where} exec provideClusterInfo must be true or false`);
  }
  const installHint = typeof exec.installHint === "string" ? exec.installHint : undefined;
  const { cluster } = options;
  return {
    apiVersion,
    // client-go: a command with a path separator is a path relative to the kubeconfig; else PATH.
    command: command.includes("/") ? resolve(options.base, command) : command,
    args,
    env,
    interactiveMode,
    ...(installHint === undefined ? {} : { installHint }),
    ...(exec.provideClusterInfo === true
      ? {
          cluster: {
            server: cluster.server,
            ...(cluster.tlsServerName ? { "tls-server-name": cluster.tlsServerName } : {}),
            ...(cluster.caPem
              ? { "certificate-authority-data": Buffer.from(cluster.caPem).toString("base64") }
              : {}),
            ...(cluster.config === undefined ? {} : { config: cluster.config }),
          },
        }
      : {}),
    where,
  };
}

export class ExecCredentialPlugin {
  private cached: ExecCredential | undefined;
  private running: Promise<ExecCredential> | undefined;

  constructor(
    readonly config: ExecPluginConfig,
    private readonly stdinIsTerminal: () => boolean = () => process.stdin.isTTY === true,
  ) {}

  describe(): string {
    return `exec credential plugin ${this.config.command} (${this.config.where})`;
  }

  /** The cached credential while it is valid, else a fresh one. */
  credential(): Promise<ExecCredential> {
    const cached = this.cached;
    if (
      cached !== undefined &&
      (cached.expiresAt === null || cached.expiresAt - EXPIRY_SLACK_MS > Date.now())
    ) {
      return Promise.resolve(cached);
    }
    return this.refresh();
  }

  /** Runs the plugin now (after a 401, or on expiry); concurrent callers share one run. */
  refresh(): Promise<ExecCredential> {
    this.running ??= this.run().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async run(): Promise<ExecCredential> {
    const { config } = this;
    const terminal = this.stdinIsTerminal();
    if (config.interactiveMode === "Always" && !terminal) {
      throw new ExecCredentialError(
        `${this.describe()} needs a terminal (interactiveMode: Always) and stdin is not one; log in with the plugin first or run from a terminal`,
      );
    }
    const interactive = config.interactiveMode !== "Never" && terminal;
    const info = {
      apiVersion: config.apiVersion,
      kind: "ExecCredential",
      spec: { interactive, ...(config.cluster === undefined ? {} : { cluster: config.cluster }) },
    };
    const { stdout, code, stderrTail, error } = await new Promise<{
      stdout: string;
      code: number | null;
      stderrTail: string;
      error: NodeJS.ErrnoException | null;
    }>((done) => {
      const child = spawn(config.command, config.args, {
        env: { ...process.env, ...config.env, KUBERNETES_EXEC_INFO: JSON.stringify(info) },
        stdio: [interactive ? "inherit" : "ignore", "pipe", "pipe"],
      });
      const out: Buffer[] = [];
      let outBytes = 0;
      let tail = "";
      let failure: NodeJS.ErrnoException | null = null;
      const timer = interactive
        ? undefined
        : setTimeout(() => {
            failure = Object.assign(new Error(`no answer within ${TIMEOUT_MS / 1000}s`), {
              code: "ETIMEDOUT",
            });
            child.kill("SIGKILL");
          }, TIMEOUT_MS);
      child.stdout.on("data", (chunk: Buffer) => {
        outBytes += chunk.length;
        if (outBytes > MAX_OUTPUT_BYTES) {
          failure = Object.assign(new Error(`more than ${MAX_OUTPUT_BYTES} bytes on stdout`), {
            code: "E2BIG",
          });
          child.kill("SIGKILL");
        } else out.push(chunk);
      });
      // The plugin talks to the user on stderr (login prompts, warnings): pass it through, keep a tail.
      child.stderr.on("data", (chunk: Buffer) => {
        process.stderr.write(chunk);
        tail = (tail + chunk.toString("utf8")).slice(-STDERR_TAIL_BYTES);
      });
      child.on("error", (e: NodeJS.ErrnoException) => {
        failure = e;
      });
      child.on("close", (exitCode) => {
        clearTimeout(timer);
        done({
          stdout: Buffer.concat(out).toString("utf8"),
          code: exitCode,
          stderrTail: tail.trim(),
          error: failure,
        });
      });
    });
    if (error !== null) {
      if (error.code === "ENOENT") {
        throw new ExecCredentialError(
          `${this.describe()}: command not found${config.installHint ? `; ${config.installHint.trim()}` : ""}`,
        );
      }
      throw new ExecCredentialError(`${this.describe()} failed: ${error.message}`);
    }
    if (code !== 0) {
      throw new ExecCredentialError(
        `${this.describe()} exited with code ${code}${stderrTail ? `: ${stderrTail}` : " and said nothing on stderr"}`,
      );
    }
    const credential = this.parse(stdout);
    this.cached = credential;
    return credential;
  }

  private parse(stdout: string): ExecCredential {
    const fail = (why: string) => new ExecCredentialError(`${this.describe()} answered ${why}`);
    let doc: unknown;
    try {
      doc = JSON.parse(stdout);
    } catch {
      throw fail("something that is not JSON on stdout (an ExecCredential was expected)");
    }
    const o = (typeof doc === "object" && doc !== null ? doc : {}) as Record<string, unknown>;
    if (o.kind !== "ExecCredential") throw fail(`kind ${JSON.stringify(o.kind)}, not ExecCredential`);
    if (o.apiVersion !== this.config.apiVersion) {
      throw fail(
        `apiVersion ${JSON.stringify(o.apiVersion)}; the kubeconfig asked for ${this.config.apiVersion}`,
      );
    }
    const status = o.status as Record<string, unknown> | undefined;
    if (typeof status !== "object" || status === null) throw fail("no status");
    const str = (key: string) => {
      const v = status[key];
      if (v === undefined || v === null || v === "") return undefined;
      if (typeof v !== "string") throw fail(`a status.${key} that is not a string`);
      return v;
    };
    const token = str("token");
    const certPem = str("clientCertificateData");
    const keyPem = str("clientKeyData");
    if ((certPem === undefined) !== (keyPem === undefined)) {
      throw fail("only one of status.clientCertificateData and status.clientKeyData");
    }
    if (token === undefined && certPem === undefined) {
      throw fail("neither status.token nor status.clientCertificateData + clientKeyData");
    }
    if (certPem !== undefined) {
      try {
        new X509Certificate(certPem);
      } catch {
        throw fail("a status.clientCertificateData that is not a PEM certificate");
      }
    }
    let expiresAt: number | null = null;
    const expiration = str("expirationTimestamp");
    if (expiration !== undefined) {
      expiresAt = Date.parse(expiration);
      if (Number.isNaN(expiresAt))
        throw fail(`an expirationTimestamp that is not RFC 3339: ${JSON.stringify(expiration)}`);
    }
    return {
      ...(token === undefined ? {} : { token }),
      ...(certPem === undefined || keyPem === undefined ? {} : { clientCertificate: { certPem, keyPem } }),
      expiresAt,
    };
  }
}

/** The plugin's token as the client's bearer-token source: cached until expiry, re-run after a 401. */
export class ExecToken {
  constructor(private readonly plugin: ExecCredentialPlugin) {}
  describe(): string {
    return this.plugin.describe();
  }
  async current(): Promise<string> {
    return this.tokenOf(await this.plugin.credential());
  }
  async refresh(): Promise<string> {
    return this.tokenOf(await this.plugin.refresh());
  }
  private tokenOf(credential: ExecCredential): string {
    if (credential.token === undefined) {
      throw new ExecCredentialError(`${this.describe()} stopped answering with a token`);
    }
    return credential.token;
  }
}
