// `osm-cert server` flags: OSM's names (DESIGN.md §7, §11) and their environment variables.

import { parseHostPort } from "../common/admin-http.js";
import type { FlagTable } from "../common/flags.js";
import { validateTrustDomain } from "../common/identity.js";
import { parseKeyAlgorithm } from "../common/keys.js";

export const SERVER_FLAGS = {
  "certificate-manager": {
    kind: "string",
    help: "signing backend",
    default: "tresor",
    env: "CERT_MANAGER",
    choices: ["tresor", "vault", "cert-manager"],
  },
  listen: {
    kind: "string",
    help: "gRPC+TLS address of the signing API",
    default: "0.0.0.0:15443",
    validate: checkHostPort,
  },
  "admin-listen": {
    kind: "string",
    help: "HTTP address for /healthz, /readyz, /metrics",
    default: "127.0.0.1:9091",
    validate: checkHostPort,
  },
  "ca-dir": {
    kind: "string",
    help: "Tresor's embedded store: ca.crt, private.key and expiration in this directory (no Kubernetes)",
  },
  "server-san": {
    kind: "list",
    help: "names in the server's own serving certificate (repeat or comma-separate)",
    default: "localhost,127.0.0.1,osm-cert.osm-system.svc,osm-cert.osm-system.svc.cluster.local",
  },
  kubeconfig: {
    kind: "string",
    help: "kubeconfig (YAML or JSON) for running outside the cluster (in a pod, the in-cluster credentials are used)",
    env: "KUBECONFIG",
  },
  "osm-namespace": {
    kind: "string",
    help: "namespace of the OSM control plane (CA bundle Secret, Lease)",
    default: "osm-system",
    env: "OSM_NAMESPACE",
  },
  "trust-bundle-configmap-name": {
    kind: "string",
    help: "ConfigMap (key ca.crt) the leader keeps in every selected namespace; empty turns distribution off",
    default: "osm-ca-root-cert",
  },
  "namespace-selector": {
    kind: "string",
    help: "label selector of the namespaces that receive the trust-bundle ConfigMap",
    default: "openservicemesh.io/monitored-by",
    validate: checkLabelSelector,
  },
  "leader-election-lease": {
    kind: "string",
    help: "coordination.k8s.io Lease that elects the one replica writing ConfigMaps",
    default: "osm-cert-leader",
  },
  "leader-lease-duration": {
    kind: "duration",
    help: "how long a silent leader keeps the Lease (Go duration, whole seconds)",
    default: "15s",
  },
  "token-audience": {
    kind: "string",
    help: "audience agents' ServiceAccount tokens must carry",
    default: "osm-cert",
  },
  "trust-domain": {
    kind: "string",
    help: "SPIFFE trust domain and service-cert name suffix",
    default: "cluster.local",
    validate: checkServerTrustDomain,
  },
  "service-cert-validity-duration": {
    kind: "duration",
    help: "default and maximum validity of service certificates (Go duration)",
    default: "24h",
    env: "OSM_SERVICE_CERT_VALIDITY_DURATION",
  },
  "min-cert-validity": { kind: "duration", help: "shortest validity an agent may ask for", default: "1s" },
  "serving-cert-validity": {
    kind: "duration",
    help: "validity of the server's own serving certificate, renewed after two thirds of it",
    default: "24h",
  },
  "request-receive-timeout": {
    kind: "duration",
    help: "a call's whole request must arrive within this (bounds what unauthenticated peers can hold)",
    default: "10s",
  },
  "max-receiving-requests": {
    kind: "number",
    help: "calls that may be receiving their request at once; more get RESOURCE_EXHAUSTED with a retry hint",
    default: "1024",
    validate: positiveInteger,
  },
  "max-in-flight-signings": {
    kind: "number",
    help: "CreateCertificate calls being authenticated or signed at once; more get RESOURCE_EXHAUSTED with a retry hint",
    default: "512",
    validate: positiveInteger,
  },
  "per-identity-signing-rate": {
    kind: "number",
    help: "certificates one identity (ServiceAccount) may ask for per second after its burst; 0 turns the limit off",
    default: "20",
    validate: nonNegativeNumber,
  },
  "per-identity-signing-burst": {
    kind: "number",
    help: "certificates one identity may ask for at once before the rate applies",
    default: "200",
    validate: positiveInteger,
  },
  workers: {
    kind: "string",
    help: 'processes serving the signing port, sharing one address (node:cluster): a number, or "auto" for every CPU this process may use',
    default: "1",
    validate: checkWorkers,
  },
  "liveness-stall-threshold": {
    kind: "duration",
    help: "/healthz fails for a minute after the event loop stalled this long (a hung process gets restarted)",
    default: "10s",
  },
  "ca-bundle-secret-name": {
    kind: "string",
    help: "Secret holding the mesh root in Kubernetes mode (Tresor keeps its CA there; cert-manager mode reads ca.crt from it)",
    default: "osm-ca-bundle",
    env: "OSM_CA_BUNDLE_SECRET_NAME",
  },
  "ca-common-name": { kind: "string", help: "CN of a root Tresor generates", default: "osm.root" },
  "ca-key-algorithm": {
    kind: "string",
    help: "key algorithm of a root Tresor generates",
    default: "ecdsa-p256",
    validate: (v) => void parseKeyAlgorithm(v),
  },
  "ca-validity": {
    kind: "duration",
    help: "validity of a root Tresor generates (Go duration)",
    default: "87600h",
  },
  "vault-protocol": {
    kind: "string",
    help: "Vault protocol (vault provider)",
    default: "http",
    env: "VAULT_PROTOCOL",
    choices: ["http", "https"],
  },
  "vault-host": {
    kind: "string",
    help: "Vault host (default vault.default.svc.cluster.local; or give --vault-addr)",
    env: "VAULT_HOST",
  },
  "vault-port": { kind: "number", help: "Vault port (default 8200)", env: "VAULT_PORT" },
  "vault-addr": {
    kind: "string",
    help: "Vault address as a URL (http(s)://host:port), Vault's own VAULT_ADDR; instead of --vault-protocol/host/port",
    env: "VAULT_ADDR",
  },
  "vault-role": {
    kind: "string",
    help: "Vault PKI role that signs",
    default: "openservicemesh",
    env: "VAULT_ROLE",
  },
  "vault-pki-mount": {
    kind: "string",
    help: "path of Vault's PKI secrets engine",
    default: "pki",
    env: "VAULT_PKI_MOUNT",
  },
  "vault-namespace": { kind: "string", help: "Vault Enterprise namespace", env: "VAULT_NAMESPACE" },
  "vault-ca-file": {
    kind: "string",
    help: "PEM CA bundle that verifies Vault's HTTPS listener",
    env: "VAULT_CACERT",
  },
  "vault-auth": {
    kind: "string",
    help: "how the server gets its Vault token: token (--vault-token or the Secret) or kubernetes (login)",
    default: "token",
    choices: ["token", "kubernetes"],
  },
  "vault-token": {
    kind: "string",
    help: "Vault token (prefer the Secret or Kubernetes auth)",
    env: "VAULT_TOKEN",
  },
  "vault-token-secret-name": {
    kind: "string",
    help: "Secret in the OSM namespace holding the Vault token (re-read every minute)",
    env: "VAULT_TOKEN_SECRET_NAME",
  },
  "vault-token-secret-key": {
    kind: "string",
    help: "key of the Vault token in that Secret",
    env: "VAULT_TOKEN_SECRET_KEY",
  },
  "vault-auth-role": { kind: "string", help: "Vault Kubernetes auth role (with --vault-auth kubernetes)" },
  "vault-auth-mount": {
    kind: "string",
    help: "path of Vault's Kubernetes auth method",
    default: "kubernetes",
  },
  "vault-auth-token-file": {
    kind: "string",
    help: "the server's projected ServiceAccount token for Vault's Kubernetes auth",
    default: "/var/run/secrets/kubernetes.io/serviceaccount/token",
  },
  "vault-timeout": { kind: "duration", help: "deadline of one Vault request (Go duration)", default: "5s" },
  "vault-trust-bundle-refresh": {
    kind: "duration",
    help: "how often Vault's CA chain is re-read (Go duration)",
    default: "1m",
  },
  "cert-manager-issuer-name": {
    kind: "string",
    help: "cert-manager issuer name",
    default: "osm-ca",
    env: "CERT_MANAGER_ISSUER_NAME",
  },
  "cert-manager-issuer-kind": {
    kind: "string",
    help: "cert-manager issuer kind",
    default: "Issuer",
    env: "CERT_MANAGER_ISSUER_KIND",
    choices: ["Issuer", "ClusterIssuer"],
  },
  "cert-manager-issuer-group": {
    kind: "string",
    help: "cert-manager issuer group",
    default: "cert-manager.io",
    env: "CERT_MANAGER_ISSUER_GROUP",
  },
  // cert-manager provider: request handling (issue 8)
  "cert-manager-preserve-requests": {
    kind: "boolean",
    help: "keep CertificateRequests after they finish, for debugging (they are deleted by default)",
    env: "CERT_MANAGER_PRESERVE_REQUESTS",
  },
  "cert-manager-request-timeout": {
    kind: "duration",
    help: "how long a CSR may wait for the issuer (queue included) before DEADLINE_EXCEEDED",
    default: "8s",
  },
  "cert-manager-max-in-flight": {
    kind: "number",
    help: "CertificateRequests that may exist at once per replica; more wait in a queue",
    default: "32",
    validate: positiveInteger,
  },
  "cert-manager-max-queued": {
    kind: "number",
    help: "CSRs that may wait for an in-flight slot; more get RESOURCE_EXHAUSTED with a retry hint",
    default: "4096",
    validate: positiveInteger,
  },
} as const satisfies FlagTable;

/**
 * A trust domain whose labels include "svc" or "pod" would put every service-cert name
 * (`<sa>.<ns>.<trust domain>`) inside Kubernetes' DNS schema, e.g. `svc.cluster.local` makes each
 * workload's name an in-cluster Service name.
 */
function checkServerTrustDomain(value: string): void {
  validateTrustDomain(value);
  const reserved = value.split(".").find((label) => label === "svc" || label === "pod");
  if (reserved !== undefined) {
    throw new Error(
      `"${value}" holds the label "${reserved}": service-cert names under it would be in-cluster ${reserved === "svc" ? "Service" : "pod"} DNS names`,
    );
  }
}

function positiveInteger(value: string): void {
  if (!/^[1-9]\d{0,8}$/.test(value.trim())) throw new Error(`"${value}" is not a positive whole number`);
}

function nonNegativeNumber(value: string): void {
  if (!/^\d{1,9}(\.\d+)?$/.test(value.trim())) throw new Error(`"${value}" is not a number ≥ 0`);
}

/** Most worker processes --workers accepts (each holds its own TLS and gRPC state, ≈60 MB). */
export const MAX_WORKERS = 64;

function checkWorkers(value: string): void {
  if (value === "auto") return;
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > MAX_WORKERS) {
    throw new Error(`"${value}" is not "auto" or a whole number from 1 to ${MAX_WORKERS}`);
  }
}

function checkHostPort(value: string): void {
  parseHostPort(value);
}

// Kubernetes label keys ([prefix/]name) and values; checked at start-up so a typo is one clear line
// instead of a 400 from the API server on every retry.
const LABEL_KEY = `(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?`;
const LABEL_VALUE = `(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?`;
const SELECTOR_TERM = new RegExp(
  String.raw`^\s*(?:!?${LABEL_KEY}|${LABEL_KEY}\s*(?:==?|!=)\s*${LABEL_VALUE}|${LABEL_KEY}\s+(?:in|notin)\s+\(\s*${LABEL_VALUE}(?:\s*,\s*${LABEL_VALUE})*\s*\))\s*$`,
);

export function checkLabelSelector(value: string): void {
  if (value.trim() === "") return;
  // Commas inside "in (…)" sets separate values, not terms.
  const terms = value.split(/,(?![^(]*\))/);
  const bad = terms.find((term) => !SELECTOR_TERM.test(term));
  if (bad !== undefined)
    throw new Error(
      `"${bad.trim()}" is not a label selector term (key, !key, key=value, key!=value, key in (a,b))`,
    );
}
