// From `osm-cert server` flags to a running Vault provider: OSM's flag names and defaults, checked
// as a whole so a bad combination stops start-up with one line naming the flag (exit 2), then the
// client, the token source and the provider wired together.

import { readFile } from "node:fs/promises";
import { FlagError } from "../../../common/flags.js";
import type { Logger } from "../../../common/logger.js";
import { type KubeClient, SECRETS } from "../../kubernetes/client.js";
import { publishCaBundleSecret } from "./ca-bundle-secret.js";
import { VaultClient } from "./client.js";
import { type TokenSourceConfig, VaultTokenManager } from "./token.js";
import { VaultProvider, VaultStartupError } from "./vault.js";

/** The server flags this provider reads (ServerFlags has them all). */
export interface VaultFlagValues {
  "vault-protocol": string;
  "vault-host": string | undefined;
  "vault-port": number | undefined;
  "vault-addr": string | undefined;
  "vault-role": string;
  "vault-pki-mount": string;
  "vault-namespace": string | undefined;
  "vault-ca-file": string | undefined;
  "vault-auth": string;
  "vault-token": string | undefined;
  "vault-token-secret-name": string | undefined;
  "vault-token-secret-key": string | undefined;
  "vault-auth-role": string | undefined;
  "vault-auth-mount": string;
  "vault-auth-token-file": string;
  "vault-timeout": number;
  "vault-trust-bundle-refresh": number;
  "osm-namespace": string;
  "ca-bundle-secret-name": string;
}

export const DEFAULT_VAULT_HOST = "vault.default.svc.cluster.local";
export const DEFAULT_VAULT_PORT = 8200;
const SECRET_POLL_MS = 60_000;
const PATH_SEGMENTS = /^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/;

export type TokenChoice =
  | { readonly kind: "static" }
  | { readonly kind: "secret"; readonly name: string; readonly key: string }
  | { readonly kind: "kubernetes"; readonly role: string };

export interface VaultSettings {
  readonly address: string;
  readonly token: TokenChoice;
}

/** Checks the flags as a whole; every problem is a FlagError naming the flag. */
export function vaultSettings(flags: VaultFlagValues): VaultSettings {
  const fail = (message: string): never => {
    throw new FlagError(`server: ${message}`);
  };
  let address: string;
  if (flags["vault-addr"] !== undefined) {
    if (flags["vault-host"] !== undefined || flags["vault-port"] !== undefined) {
      fail("--vault-addr (VAULT_ADDR) and --vault-host/--vault-port are alternatives; give one");
    }
    let url: URL | undefined;
    try {
      url = new URL(flags["vault-addr"]);
    } catch {
      url = undefined;
    }
    if (url === undefined || (url.protocol !== "http:" && url.protocol !== "https:") || url.host === "") {
      return fail(`invalid --vault-addr: "${flags["vault-addr"]}" is not an http(s)://host[:port] URL`);
    }
    address = url.origin;
  } else {
    const host = flags["vault-host"] ?? DEFAULT_VAULT_HOST;
    const port = flags["vault-port"] ?? DEFAULT_VAULT_PORT;
    if (!Number.isInteger(port) || port < 1 || port > 65_535)
      fail(`invalid --vault-port: ${port} is not a port`);
    if (host === "" || /[/\s@?#]/.test(host))
      fail(`invalid --vault-host: "${host}" is not a host name or address`);
    address = `${flags["vault-protocol"]}://${host.includes(":") && !host.startsWith("[") ? `[${host}]` : host}:${port}`;
  }
  if (flags["vault-ca-file"] !== undefined && !address.startsWith("https:")) {
    fail("--vault-ca-file needs https (--vault-protocol https or an https --vault-addr)");
  }
  for (const name of ["vault-role", "vault-pki-mount", "vault-auth-mount"] as const) {
    if (!PATH_SEGMENTS.test(flags[name])) fail(`invalid --${name}: "${flags[name]}" is not a Vault path`);
  }
  if (flags["vault-role"].includes("/"))
    fail(`invalid --vault-role: "${flags["vault-role"]}" must be one name`);

  const secretName = flags["vault-token-secret-name"];
  const secretKey = flags["vault-token-secret-key"];
  if ((secretName === undefined) !== (secretKey === undefined)) {
    fail(
      secretName === undefined
        ? "--vault-token-secret-key needs --vault-token-secret-name"
        : "--vault-token-secret-name needs --vault-token-secret-key",
    );
  }
  if (flags["vault-auth"] === "kubernetes") {
    if (flags["vault-auth-role"] === undefined || flags["vault-auth-role"] === "") {
      fail("--vault-auth kubernetes needs --vault-auth-role (the Vault Kubernetes auth role to log in with)");
    }
    if (flags["vault-token"] !== undefined)
      fail("--vault-token (VAULT_TOKEN) cannot be combined with --vault-auth kubernetes");
    if (secretName !== undefined)
      fail("--vault-token-secret-name cannot be combined with --vault-auth kubernetes");
    return { address, token: { kind: "kubernetes", role: flags["vault-auth-role"] as string } };
  }
  if (flags["vault-token"] !== undefined && secretName !== undefined) {
    fail("--vault-token (VAULT_TOKEN) and --vault-token-secret-name are alternatives; give one");
  }
  if (flags["vault-token"] !== undefined) {
    if (flags["vault-token"].trim() === "") fail("invalid --vault-token: empty");
    return { address, token: { kind: "static" } };
  }
  if (secretName !== undefined)
    return { address, token: { kind: "secret", name: secretName, key: secretKey as string } };
  return fail(
    "--certificate-manager vault needs a token: --vault-token (or VAULT_TOKEN), --vault-token-secret-name with --vault-token-secret-key, or --vault-auth kubernetes with --vault-auth-role",
  );
}

export async function openVaultProvider(
  flags: VaultFlagValues,
  logger: Logger,
  kube: KubeClient | null,
  tuning: { readonly secretPollMs?: number } = {},
): Promise<VaultProvider> {
  const settings = vaultSettings(flags);
  let caPem: string | undefined;
  if (flags["vault-ca-file"] !== undefined) {
    try {
      caPem = await readFile(flags["vault-ca-file"], "utf8");
    } catch (error) {
      throw new VaultStartupError(`--vault-ca-file ${flags["vault-ca-file"]}: ${(error as Error).message}`);
    }
  }
  const client = new VaultClient({
    address: settings.address,
    ...(caPem !== undefined ? { caPem } : {}),
    ...(flags["vault-namespace"] ? { namespace: flags["vault-namespace"] } : {}),
    timeoutMs: flags["vault-timeout"],
    logger,
  });
  let source: TokenSourceConfig;
  const choice = settings.token;
  if (choice.kind === "static") {
    source = { kind: "static", token: (flags["vault-token"] as string).trim(), describe: "--vault-token" };
  } else if (choice.kind === "kubernetes") {
    source = {
      kind: "kubernetes",
      authMount: flags["vault-auth-mount"],
      role: choice.role,
      jwtFile: flags["vault-auth-token-file"],
    };
  } else {
    if (kube === null) {
      await client.close();
      throw new VaultStartupError(
        "--vault-token-secret-name needs the Kubernetes API (in a pod, or --kubeconfig); outside Kubernetes use --vault-token",
      );
    }
    const where = `Secret ${flags["osm-namespace"]}/${choice.name} key ${choice.key}`;
    source = {
      kind: "secret",
      describe: where,
      pollMs: tuning.secretPollMs ?? SECRET_POLL_MS,
      read: async () => {
        const secret = await kube.get(SECRETS, choice.name, { namespace: flags["osm-namespace"] });
        const value = secret.data?.[choice.key];
        if (value === undefined) throw new VaultStartupError(`${where}: the key is missing`);
        return Buffer.from(value, "base64").toString("utf8");
      },
    };
  }
  const tokens = new VaultTokenManager({ client, source, logger });
  try {
    const provider = await VaultProvider.open({
      client,
      tokens,
      mount: flags["vault-pki-mount"],
      role: flags["vault-role"],
      logger,
      refreshIntervalMs: flags["vault-trust-bundle-refresh"],
    });
    if (kube !== null && flags["ca-bundle-secret-name"] !== "") {
      // Kubernetes mode: the CA bundle Secret carries the root (ca.crt only) and follows its changes.
      const target = {
        client: kube,
        namespace: flags["osm-namespace"],
        name: flags["ca-bundle-secret-name"],
        logger,
      };
      await publishCaBundleSecret(target, provider.trustBundle());
      provider.onTrustBundleChange((bundle) => void publishCaBundleSecret(target, bundle));
    }
    logger.info(
      {
        event: "vault.ready",
        address: settings.address,
        signPath: `${flags["vault-pki-mount"]}/sign/${flags["vault-role"]}`,
        tokenSource: tokens.describe(),
        roots: provider.trustBundle().roots.length,
      },
      "signing with Vault",
    );
    return provider;
  } catch (error) {
    await client.close();
    throw error;
  }
}
