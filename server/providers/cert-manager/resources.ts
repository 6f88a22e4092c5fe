// The cert-manager.io/v1 kinds the provider reads and writes (only the fields it uses), from
// cert-manager's API reference, and the condition helpers every step of a request needs.

import type { KubeObject, ResourceType } from "../../kubernetes/client.js";

export const CERT_MANAGER_GROUP = "cert-manager.io";

export interface Condition {
  type?: string;
  status?: "True" | "False" | "Unknown";
  reason?: string;
  message?: string;
  lastTransitionTime?: string;
}

export interface IssuerReference {
  name: string;
  kind?: string;
  group?: string;
}

export interface CertificateRequest extends KubeObject {
  spec: {
    /** Base64 of the PEM CSR. */
    request: string;
    issuerRef: IssuerReference;
    /** Go duration, e.g. "24h0m0s". */
    duration?: string;
    usages?: string[];
    isCA?: boolean;
  };
  status?: {
    conditions?: Condition[];
    /** Base64 of the PEM chain, leaf first. */
    certificate?: string;
    /** Base64 of the PEM CA, when the issuer knows it. */
    ca?: string;
    failureTime?: string;
  };
}

export interface Issuer extends KubeObject {
  spec?: Record<string, unknown>;
  status?: { conditions?: Condition[] };
}

export const CERTIFICATE_REQUESTS: ResourceType<CertificateRequest> = {
  group: CERT_MANAGER_GROUP,
  version: "v1",
  plural: "certificaterequests",
  kind: "CertificateRequest",
  namespaced: true,
};

/** Issuer and ClusterIssuer of the given group (the RBAC table grants get on these). */
export function issuerType(kind: "Issuer" | "ClusterIssuer", group: string): ResourceType<Issuer> {
  return kind === "Issuer"
    ? { group, version: "v1", plural: "issuers", kind, namespaced: true }
    : { group, version: "v1", plural: "clusterissuers", kind, namespaced: false };
}

export function conditionOf(
  object: { status?: { conditions?: Condition[] } },
  type: string,
): Condition | undefined {
  const conditions = object.status?.conditions;
  return Array.isArray(conditions) ? conditions.find((c) => c?.type === type) : undefined;
}
