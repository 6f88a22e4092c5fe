// `osm-cert agent` flags (DESIGN.md §11) and their environment variables.

import { parseHostPort } from "../common/admin-http.js";
import type { FlagTable } from "../common/flags.js";
import { validateTrustDomain } from "../common/identity.js";
import { parseKeyAlgorithm } from "../common/keys.js";

export const AGENT_FLAGS = {
  server: {
    kind: "string",
    help: "HOST:PORT of the signing server",
    required: true,
    validate: (v) => void parseHostPort(v),
  },
  "ca-bundle": {
    kind: "string",
    help: "PEM file with the mesh root(s) used to trust the server",
    required: true,
  },
  namespace: { kind: "string", help: "this pod's namespace", required: true, env: "POD_NAMESPACE" },
  "service-account": {
    kind: "string",
    help: "this pod's ServiceAccount",
    required: true,
    env: "SERVICE_ACCOUNT",
  },
  "token-file": { kind: "string", help: "projected ServiceAccount token (Kubernetes mode)" },
  "bootstrap-cert": {
    kind: "string",
    help: "xDS bootstrap certificate (PEM) that authenticates the first request",
  },
  "bootstrap-key": { kind: "string", help: "key of the xDS bootstrap certificate (PEM)" },
  "sds-socket": {
    kind: "string",
    help: "Unix socket Envoy reads secrets from",
    default: "/var/run/osm-cert/sds.sock",
  },
  "sds-socket-mode": {
    kind: "string",
    help: "file mode of the SDS socket",
    default: "0600",
    choices: ["0600", "0660"],
  },
  "key-algorithm": {
    kind: "string",
    help: "algorithm of the workload key",
    default: "ecdsa-p256",
    validate: (v) => void parseKeyAlgorithm(v),
  },
  "cert-validity": {
    kind: "duration",
    help: "validity to ask for (the server may shorten it)",
    default: "24h",
  },
  "rotation-fraction": {
    kind: "number",
    help: "renew after this fraction of the lifetime",
    default: "0.5",
    validate: (v) => {
      const n = Number(v);
      if (!(n > 0 && n < 1)) throw new Error(`"${v}" must be a number between 0 and 1 (exclusive)`);
    },
  },
  "admin-listen": {
    kind: "string",
    help: "HTTP address for /healthz, /readyz, /metrics, /status",
    default: "127.0.0.1:15020",
    validate: (v) => void parseHostPort(v),
  },
  "liveness-stall-threshold": {
    kind: "duration",
    help: "/healthz fails for a minute after the event loop stalled this long (a hung agent gets restarted)",
    default: "10s",
  },
  "trust-domain": {
    kind: "string",
    help: "SPIFFE trust domain",
    default: "cluster.local",
    validate: (v) => void validateTrustDomain(v),
  },
} as const satisfies FlagTable;
