// In Kubernetes mode the CA bundle Secret (--ca-bundle-secret-name) keeps its meaning for tools
// that read the mesh root from it (OSM's injector, operators), but in Vault mode it holds `ca.crt`
// only: the root key stays in Vault. Kept equal to the trust bundle; a Secret that still holds a
// private key (left from Tresor) is never touched, only reported, since deleting key material is the
// operator's decision.

import type { Logger } from "../../../common/logger.js";
import {
  isAlreadyExists,
  isNotFound,
  KubeApiError,
  type KubeClient,
  SECRETS,
  type Secret,
} from "../../kubernetes/client.js";
import type { TrustBundle } from "../provider.js";

export interface CaBundleSecretOptions {
  readonly client: Pick<KubeClient, "get" | "create" | "update">;
  readonly namespace: string;
  readonly name: string;
  readonly logger: Logger;
}

/** Writes `ca.crt` (the bundle's roots) when it differs; never throws (signing does not depend on it). */
export async function publishCaBundleSecret(
  options: CaBundleSecretOptions,
  bundle: TrustBundle,
): Promise<void> {
  const { client, namespace, name, logger } = options;
  const caCrt = Buffer.from(bundle.roots.join(""), "utf8").toString("base64");
  const where = `Secret ${namespace}/${name}`;
  try {
    let existing: Secret | null = null;
    try {
      existing = await client.get(SECRETS, name, { namespace });
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
    if (existing === null) {
      try {
        await client.create(
          SECRETS,
          { metadata: { name, namespace }, type: "Opaque", data: { "ca.crt": caCrt } },
          { namespace, idempotent: true },
        );
        logger.info(
          { event: "vault.ca_bundle_secret.created", secret: where },
          "wrote the mesh root (ca.crt only)",
        );
        return;
      } catch (error) {
        if (!isAlreadyExists(error)) throw error;
        existing = await client.get(SECRETS, name, { namespace });
      }
    }
    const data = existing.data ?? {};
    if (data["private.key"] !== undefined) {
      logger.warn(
        { event: "vault.ca_bundle_secret.holds_key", secret: where },
        `${where} still holds a private.key (from Tresor?); in Vault mode the root key lives in Vault: remove that key (osm-cert leaves this Secret untouched until then)`,
      );
      return;
    }
    if (data["ca.crt"] === caCrt && Object.keys(data).length === 1) return;
    await client.update(SECRETS, { ...existing, data: { "ca.crt": caCrt } }, { namespace });
    logger.info(
      { event: "vault.ca_bundle_secret.updated", secret: where },
      "updated the mesh root (ca.crt only)",
    );
  } catch (error) {
    const reason = error instanceof KubeApiError ? `${error.reason}: ${error.statusMessage}` : String(error);
    logger.warn(
      { event: "vault.ca_bundle_secret.failed", secret: where, error: reason },
      `could not keep ${where} in step with Vault's CA; signing is not affected`,
    );
  }
}
