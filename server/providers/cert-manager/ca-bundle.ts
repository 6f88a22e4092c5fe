// The mesh trust bundle in cert-manager mode: `ca.crt` of the CA bundle Secret, which the operator
// creates (cert-manager does not tell us its issuer's root). Read at start-up — a missing Secret
// stops start-up with the exact command that creates it — then watched, so a change reaches every
// agent through WatchTrustBundle. A change that does not parse is logged and ignored: the running
// bundle is kept rather than replaced by nothing.

import { createHash, X509Certificate } from "node:crypto";
import { backoffDelay } from "../../../common/lifecycle.js";
import type { Logger } from "../../../common/logger.js";
import { decodeCertificates, encodePem } from "../../../common/pem.js";
import { isGone, isNotFound, type KubeClient, SECRETS, type Secret } from "../../kubernetes/client.js";
import type { TrustBundle } from "../provider.js";

export class CaBundleError extends Error {
  readonly code = "ERR_OSM_CERT_CA_BUNDLE";
}

interface Parsed {
  readonly bundle: TrustBundle;
  readonly roots: readonly X509Certificate[];
}

export interface CaBundleOptions {
  readonly client: Pick<KubeClient, "get" | "watch">;
  readonly namespace: string;
  readonly name: string;
  readonly logger: Logger;
}

export function createSecretCommand(namespace: string, name: string): string {
  return `kubectl create secret generic ${name} -n ${namespace} --from-file=ca.crt=<the issuer's CA certificate (PEM)>`;
}

export class CaBundleSecret {
  private current: Parsed;
  private readonly listeners = new Set<(bundle: TrustBundle) => void>();
  private readonly stop = new AbortController();
  private running: Promise<void> | null = null;

  private constructor(
    private readonly options: CaBundleOptions,
    first: Parsed,
    private resourceVersion: string | undefined,
  ) {
    this.current = first;
  }

  static async open(options: CaBundleOptions): Promise<CaBundleSecret> {
    const { client, namespace, name } = options;
    let secret: Secret;
    try {
      secret = await client.get(SECRETS, name, { namespace });
    } catch (error) {
      if (isNotFound(error)) {
        throw new CaBundleError(
          `cert-manager mode needs the issuer's CA in Secret ${namespace}/${name} (key ca.crt), and it does not exist; create it: ${createSecretCommand(namespace, name)}`,
        );
      }
      throw error;
    }
    const parsed = parseSecret(secret, namespace, name);
    const bundle = new CaBundleSecret(options, parsed, secret.metadata?.resourceVersion);
    bundle.running = bundle.follow();
    return bundle;
  }

  get bundle(): TrustBundle {
    return this.current.bundle;
  }

  get roots(): readonly X509Certificate[] {
    return this.current.roots;
  }

  onChange(listener: (bundle: TrustBundle) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
  }

  private async follow(): Promise<void> {
    const { client, namespace, name, logger } = this.options;
    const signal = this.stop.signal;
    let failures = 0;
    while (!signal.aborted) {
      try {
        // fieldSelector by name: what RBAC with resourceNames allows for list and watch.
        for await (const event of client.watch(SECRETS, {
          namespace,
          fieldSelector: `metadata.name=${name}`,
          ...(this.resourceVersion === undefined ? {} : { resourceVersion: this.resourceVersion }),
          signal,
        })) {
          failures = 0;
          this.resourceVersion = event.object.metadata?.resourceVersion ?? this.resourceVersion;
          if (event.type === "BOOKMARK") continue;
          if (event.type === "DELETED") {
            logger.warn(
              { event: "ca_bundle.deleted", secret: `${namespace}/${name}` },
              `the CA bundle Secret was deleted; keeping the current bundle until it is back (${createSecretCommand(namespace, name)})`,
            );
            continue;
          }
          this.take(event.object as Secret);
        }
      } catch (error) {
        if (signal.aborted) return;
        if (isGone(error)) {
          this.resourceVersion = undefined; // re-watch from now: the current state arrives as ADDED
          continue;
        }
        const delay = backoffDelay(failures++, 500, 30_000);
        logger.warn(
          { event: "ca_bundle.watch_failed", error: (error as Error).message, retryInMs: Math.round(delay) },
          "watch of the CA bundle Secret failed; retrying",
        );
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
      }
    }
  }

  private take(secret: Secret): void {
    const { namespace, name, logger } = this.options;
    let parsed: Parsed;
    try {
      parsed = parseSecret(secret, namespace, name);
    } catch (error) {
      logger.error(
        { event: "ca_bundle.invalid", secret: `${namespace}/${name}`, error: (error as Error).message },
        "the CA bundle Secret changed to something unusable; keeping the current bundle",
      );
      return;
    }
    if (parsed.bundle.version === this.current.bundle.version) return;
    this.current = parsed;
    logger.info(
      { event: "ca_bundle.changed", version: parsed.bundle.version, roots: parsed.roots.length },
      "the mesh trust bundle changed (CA bundle Secret)",
    );
    for (const listener of this.listeners) listener(parsed.bundle);
  }
}

function parseSecret(secret: Secret, namespace: string, name: string): Parsed {
  const encoded = secret.data?.["ca.crt"];
  if (encoded === undefined || encoded === "") {
    throw new CaBundleError(
      `Secret ${namespace}/${name} has no ca.crt; cert-manager mode reads the issuer's CA from it: ${createSecretCommand(namespace, name)}`,
    );
  }
  let ders: Buffer[];
  try {
    ders = decodeCertificates(Buffer.from(encoded, "base64").toString("utf8"));
  } catch (error) {
    throw new CaBundleError(
      `Secret ${namespace}/${name}: ca.crt is not PEM certificates: ${(error as Error).message}`,
    );
  }
  if (ders.length === 0) throw new CaBundleError(`Secret ${namespace}/${name}: ca.crt holds no certificate`);
  const roots = ders.map((der) => new X509Certificate(der));
  const notCa = roots.findIndex((root) => !root.ca);
  if (notCa >= 0) {
    throw new CaBundleError(
      `Secret ${namespace}/${name}: certificate ${notCa} of ca.crt (${roots[notCa]?.subject.replace(/\n/g, ", ")}) is not a CA certificate`,
    );
  }
  const hash = createHash("sha256");
  for (const der of ders) hash.update(der);
  return {
    roots,
    bundle: {
      roots: ders.map((der) => encodePem("CERTIFICATE", der)),
      version: hash.digest("hex").slice(0, 16),
    },
  };
}
