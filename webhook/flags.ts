// `osm-cert webhook` flags: the names agreed with the Helm chart (CONTRACT.md) and DESIGN.md §11.

import { parseHostPort } from "../common/admin-http.js";
import { parseDuration } from "../common/duration.js";
import type { FlagTable } from "../common/flags.js";
import { isDnsLabel, validateTrustDomain } from "../common/identity.js";

// Kubernetes resource quantities (cpu: 10m, 0.5; memory: 48Mi, 1G, 1e6).
const QUANTITY = /^(?:\d+(?:\.\d+)?|\.\d+)(?:m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$/;

function quantity(optional: boolean): (value: string) => void {
  return (value) => {
    if (optional && value === "") return;
    if (!QUANTITY.test(value)) throw new Error(`"${value}" is not a Kubernetes quantity (e.g. 10m, 48Mi)`);
  };
}

function dnsLabel(value: string): void {
  if (!isDnsLabel(value)) throw new Error(`"${value}" is not a DNS label (RFC 1123)`);
}

export const WEBHOOK_FLAGS = {
  listen: {
    kind: "string",
    help: "HTTPS address of the admission webhook (POST /mutate-pod-v1)",
    default: "0.0.0.0:9443",
    validate: (v) => void parseHostPort(v),
  },
  "admin-listen": {
    kind: "string",
    help: "HTTP address for /healthz, /readyz, /metrics",
    default: "127.0.0.1:9092",
    validate: (v) => void parseHostPort(v),
  },
  "certificate-manager": {
    kind: "string",
    help: "where the serving certificate comes from (only tresor issues webhook certificates)",
    default: "tresor",
    env: "CERT_MANAGER",
    choices: ["tresor", "vault", "cert-manager"],
  },
  "ca-dir": {
    kind: "string",
    help: "Tresor's CA directory (no Kubernetes); the webhook reads it, it never creates a root",
  },
  kubeconfig: {
    kind: "string",
    help: "kubeconfig for running outside the cluster (in a pod, the in-cluster credentials are used)",
    env: "KUBECONFIG",
  },
  "osm-namespace": {
    kind: "string",
    help: "namespace of the OSM control plane and of the webhook's Service",
    default: "osm-system",
    env: "OSM_NAMESPACE",
    validate: dnsLabel,
  },
  "ca-bundle-secret-name": {
    kind: "string",
    help: "Secret holding Tresor's root in Kubernetes mode (read only)",
    default: "osm-ca-bundle",
    env: "OSM_CA_BUNDLE_SECRET_NAME",
  },
  "webhook-service": {
    kind: "string",
    help: "the webhook's Service name (serving certificate names <svc>.<ns>.svc[.cluster.local])",
    default: "osm-cert-webhook",
    validate: dnsLabel,
  },
  "webhook-config-name": {
    kind: "string",
    help: 'MutatingWebhookConfiguration whose caBundle is kept equal to the mesh roots; "" turns it off',
    default: "osm-cert-injector",
  },
  "serving-cert-validity": {
    kind: "duration",
    help: "validity of the serving certificate, renewed at two thirds of its lifetime and when the signing root changes (Go duration)",
    default: "24h",
    validate: (v) => {
      if (parseDuration(v) < 10_000) throw new Error(`"${v}" is shorter than 10s`);
    },
  },
  "agent-image": { kind: "string", help: "image of the injected agent", required: true },
  "agent-image-pull-policy": {
    kind: "string",
    help: "pull policy of the injected agent",
    default: "IfNotPresent",
    choices: ["Always", "IfNotPresent", "Never"],
  },
  "signing-server": {
    kind: "string",
    help: "HOST:PORT of the signing server, the injected agent's --server",
    default: "osm-cert.osm-system.svc:15443",
    validate: (v) => void parseHostPort(v),
  },
  "token-audience": {
    kind: "string",
    help: "audience of the injected projected ServiceAccount token",
    default: "osm-cert",
  },
  "token-expiration": {
    kind: "duration",
    help: "lifetime of the injected projected token (the kubelet refreshes it at 80%; at least 10m)",
    default: "1h",
    validate: (v) => {
      if (parseDuration(v) < 600_000) throw new Error(`"${v}" is shorter than 10m, the API server's minimum`);
    },
  },
  "trust-bundle-configmap-name": {
    kind: "string",
    help: "ConfigMap (key ca.crt) mounted as the agent's --ca-bundle",
    default: "osm-ca-root-cert",
  },
  "envoy-uid": {
    kind: "number",
    help: "UID of OSM's Envoy; the agent runs as it so osm-init's iptables rules leave its traffic alone",
    default: "1500",
    validate: (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > 2_147_483_647) throw new Error(`"${v}" is not a non-root UID`);
    },
  },
  "agent-cpu-request": {
    kind: "string",
    help: "agent CPU request",
    default: "10m",
    validate: quantity(false),
  },
  "agent-memory-request": {
    kind: "string",
    help: "agent memory request",
    default: "48Mi",
    validate: quantity(false),
  },
  "agent-memory-limit": {
    kind: "string",
    help: "agent memory limit",
    default: "96Mi",
    validate: quantity(false),
  },
  "agent-cpu-limit": {
    kind: "string",
    help: 'agent CPU limit ("" = none)',
    default: "",
    validate: quantity(true),
  },
  "trust-domain": {
    kind: "string",
    help: "SPIFFE trust domain, passed to the injected agent",
    default: "cluster.local",
    validate: (v) => void validateTrustDomain(v),
  },
} as const satisfies FlagTable;
