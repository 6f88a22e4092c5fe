// The naming contract shared by agent and server (DESIGN.md §2). Every name we mint or accept is
// derived here, so the agent's CSR and the server's policy can never disagree on spelling.

export const DEFAULT_TRUST_DOMAIN = "cluster.local";

/** A mesh workload identity: a Kubernetes ServiceAccount. */
export interface ServiceIdentity {
  readonly serviceAccount: string;
  readonly namespace: string;
}

// RFC 1123 label (namespaces) and subdomain (ServiceAccount names), as Kubernetes validates them.
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN_MAX = 253;
const TRUST_DOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export class IdentityError extends Error {
  readonly code = "ERR_OSM_CERT_IDENTITY";
}

export function isDnsLabel(value: string): boolean {
  return DNS_LABEL.test(value);
}

export function isDnsSubdomain(value: string): boolean {
  return value.length <= DNS_SUBDOMAIN_MAX && value.split(".").every(isDnsLabel);
}

export function validateTrustDomain(value: string): string {
  if (value.length > 255 || !TRUST_DOMAIN.test(value) || value.includes("..")) {
    throw new IdentityError(
      `invalid trust domain "${value}": expected lower-case DNS name like cluster.local`,
    );
  }
  return value;
}

export function makeIdentity(serviceAccount: string, namespace: string): ServiceIdentity {
  if (!isDnsSubdomain(serviceAccount)) {
    throw new IdentityError(
      `invalid service account name "${serviceAccount}": must be a DNS subdomain (RFC 1123)`,
    );
  }
  if (!isDnsLabel(namespace)) {
    throw new IdentityError(`invalid namespace "${namespace}": must be a DNS label (RFC 1123)`);
  }
  return { serviceAccount, namespace };
}

/** `bookstore-v2.bookstore`: the short form used in logs and OSM's own naming. */
export function identityName(id: ServiceIdentity): string {
  return `${id.serviceAccount}.${id.namespace}`;
}

export function sameIdentity(a: ServiceIdentity, b: ServiceIdentity): boolean {
  return a.serviceAccount === b.serviceAccount && a.namespace === b.namespace;
}

/** Service cert CN and DNS SAN: `<sa>.<ns>.<trust-domain>`. */
export function serviceCommonName(id: ServiceIdentity, trustDomain: string): string {
  return `${id.serviceAccount}.${id.namespace}.${trustDomain}`;
}

/** Service cert URI SAN: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. */
export function spiffeId(id: ServiceIdentity, trustDomain: string): string {
  return `spiffe://${trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

/**
 * The signing server's SPIFFE ID. Agents authenticate the server by it (never by a DNS name, which a
 * workload's own certificate could carry); it lies outside the `/ns/<ns>/sa/<sa>` space, so the
 * issuance policy can never hand it to a workload.
 */
export function signingServerSpiffeId(trustDomain: string): string {
  return `spiffe://${trustDomain}/osm-cert/signing-server`;
}

/** Parses a SPIFFE ID of our shape; null when it is not one (foreign shape or other trust domain). */
export function parseSpiffeId(uri: string, trustDomain: string): ServiceIdentity | null {
  const prefix = `spiffe://${trustDomain}/ns/`;
  if (!uri.startsWith(prefix)) return null;
  const parts = uri.slice(prefix.length).split("/");
  if (parts.length !== 3 || parts[1] !== "sa") return null;
  const [namespace, , serviceAccount] = parts as [string, string, string];
  if (!isDnsLabel(namespace) || !isDnsSubdomain(serviceAccount)) return null;
  return { serviceAccount, namespace };
}

/** xDS bootstrap cert CN: `<uuid>.<sa>.<ns>`, one per pod. */
export function bootstrapCommonName(podUid: string, id: ServiceIdentity): string {
  if (!UUID.test(podUid)) throw new IdentityError(`invalid pod UID "${podUid}": expected a lower-case UUID`);
  return `${podUid}.${id.serviceAccount}.${id.namespace}`;
}

/** Parses `<uuid>.<sa>.<ns>`. ServiceAccount names may contain dots; namespaces may not. */
export function parseBootstrapCommonName(cn: string): { podUid: string; identity: ServiceIdentity } | null {
  const first = cn.indexOf(".");
  const last = cn.lastIndexOf(".");
  if (first <= 0 || last <= first + 1) return null;
  const podUid = cn.slice(0, first);
  const serviceAccount = cn.slice(first + 1, last);
  const namespace = cn.slice(last + 1);
  if (!UUID.test(podUid) || !isDnsSubdomain(serviceAccount) || !isDnsLabel(namespace)) return null;
  return { podUid, identity: { serviceAccount, namespace } };
}

/** Webhook cert CN: `<service>.<namespace>.svc`. */
export function webhookCommonName(service: string, namespace: string): string {
  if (!isDnsLabel(service)) throw new IdentityError(`invalid service name "${service}": must be a DNS label`);
  if (!isDnsLabel(namespace))
    throw new IdentityError(`invalid namespace "${namespace}": must be a DNS label`);
  return `${service}.${namespace}.svc`;
}
