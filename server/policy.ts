// Issuance policy: what a caller may get. The identity comes from the credential; the CSR may only
// repeat it (DESIGN.md §2). Nothing in a CSR is ever copied into a certificate except its public key.

import { identityName, type ServiceIdentity, serviceCommonName, spiffeId } from "../common/identity.js";
import { quote } from "../common/quote.js";
import type { ParsedCsr } from "../common/x509/csr.js";

export interface PolicyLimits {
  readonly trustDomain: string;
  /** `--service-cert-validity-duration`: the default and the maximum for service certs. */
  readonly maxValidityMs: number;
  readonly minValidityMs: number;
  /**
   * DNS names our own components are verified by (the server's --server-san names). A workload's
   * certificate must never be valid for one of them.
   */
  readonly reservedDnsNames: ReadonlySet<string>;
}

/**
 * Namespaces whose service-cert DNS name would fall inside Kubernetes' own DNS schema:
 * `<sa>.svc.<cluster domain>` covers every Service name (`<service>.<namespace>.svc…`, since a
 * ServiceAccount name may hold dots) and `<sa>.pod.<cluster domain>` every pod name. A certificate
 * for such a name would let a workload pose as any in-cluster Service, ours included.
 */
export const RESERVED_NAMESPACES: ReadonlySet<string> = new Set(["svc", "pod"]);

/** Why `dnsName` may not go into a workload certificate, or null when it may. */
export function reservedNameReason(
  identity: ServiceIdentity,
  dnsName: string,
  reserved: ReadonlySet<string>,
): string | null {
  if (RESERVED_NAMESPACES.has(identity.namespace)) {
    return `namespace "${identity.namespace}" cannot hold mesh identities: its service-cert name ${dnsName} would be an in-cluster ${identity.namespace === "svc" ? "Service" : "pod"} DNS name`;
  }
  if (reserved.has(dnsName.toLowerCase())) {
    return `the service-cert name ${dnsName} is one the signing server itself is verified by (--server-san)`;
  }
  return null;
}

export type PolicyDecision =
  | {
      readonly ok: true;
      readonly commonName: string;
      readonly dnsNames: readonly string[];
      readonly uris: readonly string[];
      readonly validityMs: number;
      readonly clamped: boolean;
    }
  | { readonly ok: false; readonly code: "PERMISSION_DENIED" | "INVALID_ARGUMENT"; readonly message: string };

export function decideServiceCertificate(
  caller: ServiceIdentity,
  csr: ParsedCsr,
  requestedValidityMs: number,
  limits: PolicyLimits,
): PolicyDecision {
  const commonName = serviceCommonName(caller, limits.trustDomain);
  const uri = spiffeId(caller, limits.trustDomain);
  const deny = (what: string): PolicyDecision => ({
    ok: false,
    code: "PERMISSION_DENIED",
    message: `CSR ${what}, but the caller is ${identityName(caller)} (${uri}); a CSR may only name the caller's own identity`,
  });

  const reserved = reservedNameReason(caller, commonName, limits.reservedDnsNames);
  if (reserved !== null) return { ok: false, code: "PERMISSION_DENIED", message: reserved };
  if (csr.requestsCa) return deny("asks for CA:true");
  if (csr.subjectCommonName !== null && csr.subjectCommonName !== commonName) {
    return deny(`names CN ${quote(csr.subjectCommonName)} instead of "${commonName}"`);
  }
  const otherAttribute = csr.subjectAttributes.find((a) => a.oid !== "2.5.4.3");
  if (otherAttribute !== undefined)
    return deny(`carries subject attribute ${otherAttribute.oid}=${quote(otherAttribute.value)}`);
  const foreignDns = csr.dnsNames.find((name) => name !== commonName);
  if (foreignDns !== undefined) return deny(`names DNS SAN ${quote(foreignDns)}`);
  const foreignUri = csr.uris.find((name) => name !== uri);
  if (foreignUri !== undefined) return deny(`names URI SAN ${quote(foreignUri)}`);
  if (csr.ipAddresses.length > 0) return deny(`names IP SAN ${csr.ipAddresses[0]}`);
  if (csr.emailAddresses.length > 0) return deny(`names e-mail SAN ${quote(csr.emailAddresses[0] ?? "")}`);
  if (csr.otherSanCount > 0) return deny("names SANs of a kind we never issue (otherName, directoryName, …)");

  const validity = clampValidity(requestedValidityMs, limits);
  if (!validity.ok) return validity;
  return {
    ok: true,
    commonName,
    dnsNames: [commonName],
    uris: [uri],
    validityMs: validity.validityMs,
    clamped: validity.clamped,
  };
}

function clampValidity(
  requestedMs: number,
  limits: PolicyLimits,
):
  | { ok: true; validityMs: number; clamped: boolean }
  | { ok: false; code: "INVALID_ARGUMENT"; message: string } {
  if (!Number.isFinite(requestedMs) || requestedMs < 0) {
    return { ok: false, code: "INVALID_ARGUMENT", message: "requested validity must not be negative" };
  }
  if (requestedMs === 0) return { ok: true, validityMs: limits.maxValidityMs, clamped: false };
  if (requestedMs < limits.minValidityMs) {
    return {
      ok: false,
      code: "INVALID_ARGUMENT",
      message: `requested validity ${requestedMs}ms is below the server minimum of ${limits.minValidityMs}ms`,
    };
  }
  if (requestedMs > limits.maxValidityMs)
    return { ok: true, validityMs: limits.maxValidityMs, clamped: true };
  return { ok: true, validityMs: requestedMs, clamped: false };
}
