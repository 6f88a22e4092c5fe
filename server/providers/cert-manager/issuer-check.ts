// Start-up checks of the configured issuer, so configuration mistakes surface once, at start, with
// what to do — not as thousands of CertificateRequests that never sign. ACME issuers are refused:
// an ACME CA validates public DNS names and cannot sign SPIFFE URIs or in-mesh names. An issuer that
// is not Ready yet only warns (cert-manager may still be setting it up).

import type { Logger } from "../../../common/logger.js";
import { isNotFound, type KubeApiError, type KubeClient } from "../../kubernetes/client.js";
import { CERT_MANAGER_GROUP, conditionOf, type IssuerReference, issuerType } from "./resources.js";

export class IssuerCheckError extends Error {
  readonly code = "ERR_OSM_CERT_ISSUER_CHECK";
}

export interface IssuerCheckOptions {
  readonly client: Pick<KubeClient, "get">;
  /** The OSM namespace: where an Issuer (not a ClusterIssuer) must live. */
  readonly namespace: string;
  readonly issuer: Required<IssuerReference> & { kind: "Issuer" | "ClusterIssuer" };
  readonly logger: Logger;
}

/** The generic 404 of an API group the server does not serve: no object was named in it. */
export function isMissingApi(error: unknown): boolean {
  return isNotFound(error) && (error as KubeApiError).details?.name === undefined;
}

export const CERT_MANAGER_MISSING =
  "cert-manager is not installed in this cluster: the API server does not serve cert-manager.io/v1 (no CertificateRequest/Issuer CRDs). Install cert-manager first, or choose another --certificate-manager";

export async function checkIssuer(options: IssuerCheckOptions): Promise<void> {
  const { client, namespace, issuer, logger } = options;
  const where =
    issuer.kind === "Issuer" ? `Issuer ${namespace}/${issuer.name}` : `ClusterIssuer ${issuer.name}`;
  if (issuer.group !== CERT_MANAGER_GROUP) {
    // External issuers (e.g. awspca.cert-manager.io) have kinds of their own that we cannot read.
    logger.info(
      { event: "cert_manager.issuer_unchecked", issuer: where, group: issuer.group },
      "external issuer group: its readiness and type are not checked at start-up",
    );
    return;
  }
  let object: Awaited<ReturnType<typeof client.get>>;
  try {
    object = await client.get(issuerType(issuer.kind, issuer.group), issuer.name, {
      ...(issuer.kind === "Issuer" ? { namespace } : {}),
    });
  } catch (error) {
    if (isMissingApi(error)) throw new IssuerCheckError(CERT_MANAGER_MISSING);
    if (isNotFound(error)) {
      throw new IssuerCheckError(
        `${where} does not exist: create it (e.g. a CA issuer over the mesh root's key pair), or point --cert-manager-issuer-name/--cert-manager-issuer-kind at the right one`,
      );
    }
    throw error;
  }
  const spec = (object as { spec?: Record<string, unknown> }).spec ?? {};
  if (spec.acme !== undefined) {
    throw new IssuerCheckError(
      `${where} is an ACME issuer: ACME CAs validate public DNS names and cannot sign mesh identities (SPIFFE URIs, in-mesh names); use a CA, Vault or other private issuer`,
    );
  }
  const ready = conditionOf(object as { status?: { conditions?: [] } }, "Ready");
  if (ready?.status !== "True") {
    logger.warn(
      {
        event: "cert_manager.issuer_not_ready",
        issuer: where,
        reason: ready?.reason,
        message: ready?.message,
      },
      `${where} is not Ready yet; certificates wait for it (requests time out until it is)`,
    );
  } else {
    logger.info(
      { event: "cert_manager.issuer_ready", issuer: where, type: Object.keys(spec)[0] },
      `${where} is Ready`,
    );
  }
}
