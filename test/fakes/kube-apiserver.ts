// A fake Kubernetes API server for tests (DESIGN.md §10), written from the public API reference
// (kubernetes.io/docs/reference/using-api/api-concepts, the core/v1, coordination.k8s.io/v1,
// authentication.k8s.io/v1 and admissionregistration.k8s.io/v1 references) rather than from our client: HTTPS with its own cluster CA,
// bearer-token and client-certificate authentication, the real paths, JSON shapes and Status
// errors, a cluster-wide resourceVersion bumped on every write, optimistic concurrency, label and
// field selectors, paginated lists, and watch streams with bookmarks and 410 Expired once a version
// falls out of the retained window. Switches inject the faults production meets: 5xx and 429,
// latency, dropped connections, restarts, RBAC denials. Every request is recorded for assertions.
//
// Deliberate simplifications (each noted where it happens): no managedFields, namespaces are
// removed at once instead of lingering in Terminating, strategic merge patch behaves as a merge
// patch (equivalent for the map-only kinds served here), JSON patch and apply are not served.

import { createHash, type KeyObject, randomBytes, randomUUID, sign, X509Certificate } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import type { TLSSocket } from "node:tls";
import { generateKeyPair, privateKeyToPem } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import {
  buildCertificate,
  certificateSubjectDer,
  encodeName,
  ext,
  keyIdentifier,
  randomSerialNumber,
  signerFor,
} from "../../common/x509/certificate.js";
import { CERT_MANAGER_RESOURCES, CertManagerSigner } from "./cert-manager.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export type Verb = "get" | "list" | "watch" | "create" | "update" | "patch" | "delete";

/** The audience the API server itself accepts tokens for (kube-apiserver --api-audiences). */
export const API_AUDIENCE = "https://kubernetes.default.svc.cluster.local";
const MAX_BODY_BYTES = 3 * 1024 * 1024;
const MAX_DATA_BYTES = 1024 * 1024;

export interface FakeUser {
  readonly username: string;
  readonly uid?: string;
  readonly groups?: readonly string[];
  readonly extra?: Readonly<Record<string, readonly string[]>>;
}

export interface FakeKubeApiServerOptions {
  /** Created at start, besides default, kube-system, kube-public and kube-node-lease. */
  readonly namespaces?: readonly string[];
  /** Changes kept for watch resumption and list continuation; older versions get 410 Expired. */
  readonly retainedEvents?: number;
  /** Bookmark period for watches that allow them (the real server sends one about every minute). */
  readonly bookmarkIntervalMs?: number;
  /** kube-apiserver --anonymous-auth: requests without credentials act as system:anonymous. */
  readonly anonymousAuth?: boolean;
  /**
   * kube-apiserver --authorization-mode=RBAC: requests are allowed only by the stored Roles and
   * bindings (system:masters excepted). Off by default: other tests do not install RBAC.
   */
  readonly rbac?: boolean;
}

export interface FaultMatch {
  readonly verb?: Verb | readonly Verb[];
  /** Plural, e.g. "secrets", "leases". */
  readonly resource?: string;
  readonly namespace?: string;
  readonly name?: string;
}

export interface DenyRule extends FaultMatch {
  readonly user?: string;
}

export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly verb?: Verb;
  readonly resource?: string;
  readonly namespace?: string;
  readonly name?: string;
  readonly user?: string;
  /** HTTP status; 0 when the fake hung up without answering. */
  readonly status: number;
}

export interface ResourceDef {
  readonly group: string;
  readonly version: string;
  readonly plural: string;
  readonly kind: string;
  readonly namespaced: boolean;
  /** TokenReviews are create-only and never stored. */
  readonly stored: boolean;
  readonly fieldSelectors: readonly string[];
  /** Defaults and validation shared by create and update; returns field errors. */
  readonly prepare?: (object: JsonObject, previous: JsonObject | undefined) => FieldError[] | BadRequest;
  /** Custom resources with a status subresource: writes to the object keep its status, and `/status` writes only status. */
  readonly statusSubresource?: boolean;
}

export interface FieldError {
  readonly reason: "FieldValueInvalid" | "FieldValueRequired" | "FieldValueTooLong" | "FieldValueForbidden";
  readonly field: string;
  readonly message: string;
}

export class BadRequest {
  constructor(readonly message: string) {}
}

interface Route {
  readonly resource: ResourceDef;
  readonly verb: Verb;
  readonly namespace?: string;
  readonly name?: string;
  readonly subresource?: "status";
  readonly query: URLSearchParams;
}

interface Stored {
  readonly resource: ResourceDef;
  readonly namespace: string;
  readonly object: JsonObject;
}

export interface ChangeEvent {
  readonly rv: number;
  readonly type: "ADDED" | "MODIFIED" | "DELETED";
  readonly resource: ResourceDef;
  readonly namespace: string;
  readonly object: JsonObject;
  readonly previous?: JsonObject;
}

interface Watcher {
  readonly resource: ResourceDef;
  readonly namespace?: string;
  readonly selector: Selector;
  readonly res: ServerResponse;
  readonly bookmarks: boolean;
}

interface Context {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly path: string;
  route?: Route;
  user?: FakeUser;
  recorded: boolean;
}

interface TokenRecord {
  readonly user: FakeUser;
  readonly audiences: readonly string[];
  readonly expiresAt?: number;
  revoked: boolean;
}

interface StatusFault {
  remaining: number;
  readonly match: FaultMatch;
  readonly status: number;
  readonly retryAfterSeconds?: number;
  readonly message?: string;
}

interface DisconnectFault {
  remaining: number;
  readonly match: FaultMatch;
  readonly afterWrite: boolean;
}

// ---------------------------------------------------------------------------------------------
// The kinds served

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DATA_KEY = /^[-._a-zA-Z0-9]+$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function dataKeyErrors(map: Json | undefined, field: string): FieldError[] {
  const errors: FieldError[] = [];
  if (!isObject(map)) return errors;
  for (const key of Object.keys(map)) {
    if (!DATA_KEY.test(key)) {
      errors.push({
        reason: "FieldValueInvalid",
        field: `${field}[${key}]`,
        message: `Invalid value: "${key}": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')`,
      });
    }
  }
  return errors;
}

/** Base64 maps ([]byte in Go) fail JSON decoding, before validation, when a value is not base64. */
function base64MapError(kind: string, map: Json | undefined): BadRequest | undefined {
  if (map === undefined || map === null) return undefined;
  if (!isObject(map))
    return new BadRequest(`${kind} in version "v1" cannot be handled as a ${kind}: expected a map`);
  for (const value of Object.values(map)) {
    if (typeof value !== "string" || !BASE64.test(value)) {
      return new BadRequest(
        `${kind} in version "v1" cannot be handled as a ${kind}: illegal base64 data at input byte 0`,
      );
    }
  }
  return undefined;
}

function immutableErrors(
  object: JsonObject,
  previous: JsonObject | undefined,
  fields: readonly string[],
): FieldError[] {
  if (previous === undefined) return [];
  const errors: FieldError[] = [];
  if (previous.immutable === true) {
    if (object.immutable !== true) {
      errors.push({
        reason: "FieldValueForbidden",
        field: "immutable",
        message: "Forbidden: field is immutable when `immutable` is set",
      });
    }
    for (const field of fields) {
      if (canonical(object[field] ?? null) !== canonical(previous[field] ?? null)) {
        errors.push({
          reason: "FieldValueForbidden",
          field,
          message: "Forbidden: field is immutable when `immutable` is set",
        });
      }
    }
  }
  return errors;
}

function sizeErrors(maps: (Json | undefined)[], field: string, decodeBase64: boolean[]): FieldError[] {
  let total = 0;
  maps.forEach((map, index) => {
    if (!isObject(map)) return;
    for (const [key, value] of Object.entries(map)) {
      if (typeof value !== "string") continue;
      total +=
        key.length + (decodeBase64[index] ? Buffer.from(value, "base64").length : Buffer.byteLength(value));
    }
  });
  return total > MAX_DATA_BYTES
    ? [{ reason: "FieldValueTooLong", field, message: `Too long: must have at most ${MAX_DATA_BYTES} bytes` }]
    : [];
}

const SECRETS: ResourceDef = {
  group: "",
  version: "v1",
  plural: "secrets",
  kind: "Secret",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace", "type"],
  prepare(object, previous) {
    const bad = base64MapError("Secret", object.data);
    if (bad) return bad;
    // stringData is a write-only convenience: folded into data, never stored or returned.
    if (isObject(object.stringData)) {
      const data: JsonObject = isObject(object.data) ? { ...object.data } : {};
      for (const [key, value] of Object.entries(object.stringData)) {
        if (typeof value === "string") data[key] = Buffer.from(value, "utf8").toString("base64");
      }
      object.data = data;
    }
    delete object.stringData;
    object.type ??= "Opaque";
    const errors = [...dataKeyErrors(object.data, "data"), ...sizeErrors([object.data], "data", [true])];
    if (previous !== undefined && previous.type !== object.type) {
      errors.push({
        reason: "FieldValueInvalid",
        field: "type",
        message: `Invalid value: "${String(object.type)}": field is immutable`,
      });
    }
    return [...errors, ...immutableErrors(object, previous, ["data"])];
  },
};

const CONFIG_MAPS: ResourceDef = {
  group: "",
  version: "v1",
  plural: "configmaps",
  kind: "ConfigMap",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace"],
  prepare(object, previous) {
    const bad = base64MapError("ConfigMap", object.binaryData);
    if (bad) return bad;
    if (object.data !== undefined && object.data !== null) {
      if (!isObject(object.data) || Object.values(object.data).some((v) => typeof v !== "string")) {
        return new BadRequest(
          'ConfigMap in version "v1" cannot be handled as a ConfigMap: data values must be strings',
        );
      }
    }
    const errors = [
      ...dataKeyErrors(object.data, "data"),
      ...dataKeyErrors(object.binaryData, "binaryData"),
      ...sizeErrors([object.data, object.binaryData], "data", [false, true]),
    ];
    if (isObject(object.data) && isObject(object.binaryData)) {
      for (const key of Object.keys(object.binaryData)) {
        if (key in object.data) {
          errors.push({
            reason: "FieldValueInvalid",
            field: `data[${key}]`,
            message: `Invalid value: "${key}": duplicate of key present in binaryData`,
          });
        }
      }
    }
    return [...errors, ...immutableErrors(object, previous, ["data", "binaryData"])];
  },
};

const NAMESPACES: ResourceDef = {
  group: "",
  version: "v1",
  plural: "namespaces",
  kind: "Namespace",
  namespaced: false,
  stored: true,
  fieldSelectors: ["metadata.name", "status.phase"],
  prepare(object, previous) {
    const metadata = object.metadata as JsonObject;
    // Since 1.21 the API server stamps every namespace with this label, so selectors can name it.
    metadata.labels = {
      ...(isObject(metadata.labels) ? metadata.labels : {}),
      "kubernetes.io/metadata.name": String(metadata.name),
    };
    object.spec = previous?.spec ?? { finalizers: ["kubernetes"] };
    object.status = previous?.status ?? { phase: "Active" };
    return [];
  },
};

const LEASES: ResourceDef = {
  group: "coordination.k8s.io",
  version: "v1",
  plural: "leases",
  kind: "Lease",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace"],
  prepare(object) {
    const spec = object.spec;
    if (spec === undefined || spec === null) return [];
    if (!isObject(spec))
      return new BadRequest('Lease in version "v1" cannot be handled as a Lease: spec must be an object');
    const duration = spec.leaseDurationSeconds;
    if (duration !== undefined && duration !== null && (typeof duration !== "number" || duration <= 0)) {
      return [
        {
          reason: "FieldValueInvalid",
          field: "spec.leaseDurationSeconds",
          message: `Invalid value: ${String(duration)}: must be greater than 0`,
        },
      ];
    }
    return [];
  },
};

const TOKEN_REVIEWS: ResourceDef = {
  group: "authentication.k8s.io",
  version: "v1",
  plural: "tokenreviews",
  kind: "TokenReview",
  namespaced: false,
  stored: false,
  fieldSelectors: [],
};

// admissionregistration.k8s.io/v1 (cluster-scoped). Validation covers what a caBundle writer can get
// wrong: the v1 required fields of each webhook, one of url/service, and caBundle as base64 bytes
// (the API server decodes []byte fields and answers 400 on bad base64). Simplification: a strategic
// merge patch replaces `webhooks` whole here, where the real server merges entries by `name`.
const MUTATING_WEBHOOK_CONFIGURATIONS: ResourceDef = {
  group: "admissionregistration.k8s.io",
  version: "v1",
  plural: "mutatingwebhookconfigurations",
  kind: "MutatingWebhookConfiguration",
  namespaced: false,
  stored: true,
  fieldSelectors: ["metadata.name"],
  prepare(object) {
    const webhooks = object.webhooks;
    if (webhooks === undefined || webhooks === null) return [];
    if (!Array.isArray(webhooks)) {
      return new BadRequest(
        'MutatingWebhookConfiguration in version "v1" cannot be handled as a MutatingWebhookConfiguration: webhooks must be a list',
      );
    }
    const errors: FieldError[] = [];
    const names = new Set<string>();
    for (const [index, webhook] of webhooks.entries()) {
      const field = `webhooks[${index}]`;
      if (!isObject(webhook)) return new BadRequest(`${field} must be an object`);
      const caBundle = isObject(webhook.clientConfig) ? webhook.clientConfig.caBundle : undefined;
      if (caBundle !== undefined && caBundle !== null) {
        if (
          typeof caBundle !== "string" ||
          !/^[A-Za-z0-9+/]*={0,2}$/.test(caBundle) ||
          caBundle.length % 4 !== 0
        ) {
          return new BadRequest(
            `MutatingWebhookConfiguration in version "v1" cannot be handled as a MutatingWebhookConfiguration: ${field}.clientConfig.caBundle: illegal base64 data`,
          );
        }
      }
      if (typeof webhook.name !== "string" || webhook.name === "") {
        errors.push({ reason: "FieldValueRequired", field: `${field}.name`, message: "Required value" });
      } else if (names.has(webhook.name)) {
        errors.push({
          reason: "FieldValueInvalid",
          field: `${field}.name`,
          message: `Duplicate value: "${webhook.name}"`,
        });
      } else {
        names.add(webhook.name);
      }
      if (!isObject(webhook.clientConfig)) {
        errors.push({
          reason: "FieldValueRequired",
          field: `${field}.clientConfig`,
          message: "Required value",
        });
      } else {
        const { url, service } = webhook.clientConfig;
        if ((url === undefined || url === null) === (service === undefined || service === null)) {
          errors.push({
            reason: "FieldValueRequired",
            field: `${field}.clientConfig`,
            message: "Required value: exactly one of url or service is required",
          });
        }
      }
      if (!Array.isArray(webhook.admissionReviewVersions) || webhook.admissionReviewVersions.length === 0) {
        errors.push({
          reason: "FieldValueRequired",
          field: `${field}.admissionReviewVersions`,
          message: "Required value: must specify one of v1, v1beta1",
        });
      }
      if (typeof webhook.sideEffects !== "string") {
        errors.push({
          reason: "FieldValueRequired",
          field: `${field}.sideEffects`,
          message: "Required value: must specify one of None, NoneOnDryRun",
        });
      }
    }
    return errors;
  },
};

// The kinds a Helm install of helm/osm-cert creates (apps/v1, policy/v1, rbac.authorization.k8s.io/v1,
// networking.k8s.io/v1 references, and the Prometheus Operator's ServiceMonitor CRD). Validation
// covers the API server's checks a chart can trip over: a Deployment selector that does not match
// its template labels, RBAC rules without verbs/groups/resources, a binding without or changing its
// roleRef, a Service without ports. Schema-level checks are left to kubernetes-models in the tests.
// Simplifications: no controllers run (no ReplicaSets, Pods or status); ServiceMonitors are served as
// if the Prometheus Operator's CRD were installed.

function field(reason: FieldError["reason"], path: string, message: string): FieldError {
  return { reason, field: path, message };
}

function labelsMatch(selector: Json | undefined, labels: Json | undefined): boolean {
  if (!isObject(selector)) return false;
  const have = isObject(labels) ? labels : {};
  const wanted = isObject(selector.matchLabels) ? selector.matchLabels : {};
  if (Object.entries(wanted).some(([key, value]) => have[key] !== value)) return false;
  const expressions = Array.isArray(selector.matchExpressions) ? selector.matchExpressions : [];
  return expressions.every((e) => {
    if (!isObject(e) || typeof e.key !== "string") return false;
    const values = Array.isArray(e.values) ? e.values : [];
    const value = have[e.key];
    switch (e.operator) {
      case "In":
        return typeof value === "string" && values.includes(value);
      case "NotIn":
        return typeof value !== "string" || !values.includes(value);
      case "Exists":
        return value !== undefined;
      case "DoesNotExist":
        return value === undefined;
      default:
        return false;
    }
  });
}

const SERVICE_ACCOUNTS: ResourceDef = {
  group: "",
  version: "v1",
  plural: "serviceaccounts",
  kind: "ServiceAccount",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace"],
};

// The service CIDR 10.96.0.0/12, handed out in order (no reuse: fakes are short-lived).
let clusterIpsAllocated = 0;
function allocateClusterIp(): string {
  clusterIpsAllocated++;
  return `10.96.${Math.floor(clusterIpsAllocated / 254) % 256}.${1 + (clusterIpsAllocated % 254)}`;
}

const SERVICES: ResourceDef = {
  group: "",
  version: "v1",
  plural: "services",
  kind: "Service",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"],
  prepare(object, previous) {
    if (!isObject(object.spec)) return [field("FieldValueRequired", "spec.ports", "Required value")];
    const spec = object.spec;
    spec.type ??= "ClusterIP";
    spec.sessionAffinity ??= "None";
    const errors: FieldError[] = [];
    const ports = Array.isArray(spec.ports) ? spec.ports : [];
    if (ports.length === 0 && spec.type !== "ExternalName")
      errors.push(field("FieldValueRequired", "spec.ports", "Required value"));
    ports.forEach((port, index) => {
      if (!isObject(port)) return;
      port.protocol ??= "TCP";
      port.targetPort ??= port.port ?? null;
      if (ports.length > 1 && (typeof port.name !== "string" || port.name === ""))
        errors.push(field("FieldValueRequired", `spec.ports[${index}].name`, "Required value"));
    });
    // The allocator assigns the ClusterIP once; it never changes afterwards.
    const previousIp = isObject(previous?.spec) ? previous.spec.clusterIP : undefined;
    if (spec.type !== "ExternalName" && spec.clusterIP !== "None") {
      const ip = typeof previousIp === "string" ? previousIp : allocateClusterIp();
      spec.clusterIP = ip;
      spec.clusterIPs = [ip];
    }
    return errors;
  },
};

const DEPLOYMENTS: ResourceDef = {
  group: "apps",
  version: "v1",
  plural: "deployments",
  kind: "Deployment",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace"],
  prepare(object, previous) {
    const spec = isObject(object.spec) ? object.spec : {};
    const template = isObject(spec.template) ? spec.template : {};
    const labels = isObject(template.metadata) ? template.metadata.labels : undefined;
    const podSpec = isObject(template.spec) ? template.spec : {};
    const errors: FieldError[] = [];
    if (!isObject(spec.selector)) {
      errors.push(field("FieldValueRequired", "spec.selector", "Required value"));
    } else if (!labelsMatch(spec.selector, labels)) {
      errors.push(
        field(
          "FieldValueInvalid",
          "spec.template.metadata.labels",
          `Invalid value: ${JSON.stringify(labels ?? {})}: \`selector\` does not match template \`labels\``,
        ),
      );
    }
    if (!Array.isArray(podSpec.containers) || podSpec.containers.length === 0)
      errors.push(field("FieldValueRequired", "spec.template.spec.containers", "Required value"));
    if (previous !== undefined && isObject(previous.spec)) {
      if (canonical(previous.spec.selector ?? null) !== canonical(spec.selector ?? null))
        errors.push(field("FieldValueInvalid", "spec.selector", "Invalid value: field is immutable"));
    }
    spec.replicas ??= 1;
    return errors;
  },
};

const POD_DISRUPTION_BUDGETS: ResourceDef = {
  group: "policy",
  version: "v1",
  plural: "poddisruptionbudgets",
  kind: "PodDisruptionBudget",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace"],
  prepare(object) {
    const spec = isObject(object.spec) ? object.spec : {};
    if (spec.minAvailable !== undefined && spec.maxUnavailable !== undefined)
      return [
        field(
          "FieldValueInvalid",
          "spec",
          "Invalid value: minAvailable and maxUnavailable cannot be both set",
        ),
      ];
    return [];
  },
};

function ruleErrors(object: JsonObject, clusterScoped: boolean): FieldError[] {
  const rules = Array.isArray(object.rules) ? object.rules : [];
  const errors: FieldError[] = [];
  rules.forEach((rule, index) => {
    const at = `rules[${index}]`;
    if (!isObject(rule)) return;
    const nonEmpty = (v: Json | undefined) => Array.isArray(v) && v.length > 0;
    if (!nonEmpty(rule.verbs))
      errors.push(
        field("FieldValueRequired", `${at}.verbs`, "Required value: verbs must contain at least one value"),
      );
    if (nonEmpty(rule.nonResourceURLs)) {
      if (!clusterScoped)
        errors.push(
          field(
            "FieldValueInvalid",
            `${at}.nonResourceURLs`,
            "Invalid value: namespaced rules cannot apply to non-resource URLs",
          ),
        );
      return;
    }
    if (!nonEmpty(rule.apiGroups))
      errors.push(
        field(
          "FieldValueRequired",
          `${at}.apiGroups`,
          "Required value: resource rules must supply at least one api group",
        ),
      );
    if (!nonEmpty(rule.resources))
      errors.push(
        field(
          "FieldValueRequired",
          `${at}.resources`,
          "Required value: resource rules must supply at least one resource",
        ),
      );
  });
  return errors;
}

function bindingErrors(object: JsonObject, previous: JsonObject | undefined): FieldError[] {
  const roleRef = object.roleRef;
  if (!isObject(roleRef) || typeof roleRef.name !== "string" || roleRef.name === "")
    return [field("FieldValueRequired", "roleRef.name", "Required value")];
  if (previous !== undefined && canonical(previous.roleRef ?? null) !== canonical(roleRef))
    return [
      field(
        "FieldValueInvalid",
        "roleRef",
        `Invalid value: ${JSON.stringify(roleRef)}: cannot change roleRef`,
      ),
    ];
  return [];
}

const rbac = (
  plural: string,
  kind: string,
  namespaced: boolean,
  prepare: ResourceDef["prepare"],
): ResourceDef => ({
  group: "rbac.authorization.k8s.io",
  version: "v1",
  plural,
  kind,
  namespaced,
  stored: true,
  fieldSelectors: namespaced ? ["metadata.name", "metadata.namespace"] : ["metadata.name"],
  ...(prepare === undefined ? {} : { prepare }),
});

const ROLES = rbac("roles", "Role", true, (object) => ruleErrors(object, false));
const CLUSTER_ROLES = rbac("clusterroles", "ClusterRole", false, (object) => ruleErrors(object, true));
const ROLE_BINDINGS = rbac("rolebindings", "RoleBinding", true, bindingErrors);
const CLUSTER_ROLE_BINDINGS = rbac("clusterrolebindings", "ClusterRoleBinding", false, bindingErrors);

const NETWORK_POLICIES: ResourceDef = {
  group: "networking.k8s.io",
  version: "v1",
  plural: "networkpolicies",
  kind: "NetworkPolicy",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace"],
  prepare(object) {
    if (!isObject(object.spec) || !isObject(object.spec.podSelector))
      return [field("FieldValueRequired", "spec.podSelector", "Required value")];
    return [];
  },
};

const SERVICE_MONITORS: ResourceDef = {
  group: "monitoring.coreos.com",
  version: "v1",
  plural: "servicemonitors",
  kind: "ServiceMonitor",
  namespaced: true,
  stored: true,
  fieldSelectors: ["metadata.name", "metadata.namespace"],
  prepare(object) {
    // The CRD's structural schema requires spec.selector (endpoints may be empty).
    if (!isObject(object.spec) || !isObject(object.spec.selector))
      return [field("FieldValueRequired", "spec.selector", "Required value")];
    return [];
  },
};

const RESOURCES: readonly ResourceDef[] = [
  SECRETS,
  CONFIG_MAPS,
  NAMESPACES,
  LEASES,
  TOKEN_REVIEWS,
  MUTATING_WEBHOOK_CONFIGURATIONS,
  SERVICE_ACCOUNTS,
  SERVICES,
  DEPLOYMENTS,
  POD_DISRUPTION_BUDGETS,
  ROLES,
  CLUSTER_ROLES,
  ROLE_BINDINGS,
  CLUSTER_ROLE_BINDINGS,
  NETWORK_POLICIES,
  SERVICE_MONITORS,
  ...CERT_MANAGER_RESOURCES,
];

const apiVersionOf = (r: ResourceDef): string => (r.group === "" ? r.version : `${r.group}/${r.version}`);
/** `secrets`, `leases.coordination.k8s.io`: what Status messages call a resource. */
const qualified = (r: ResourceDef): string => (r.group === "" ? r.plural : `${r.plural}.${r.group}`);

// ---------------------------------------------------------------------------------------------
// Status bodies, shaped exactly as the API server writes them (field order included)

function failure(code: number, reason: string, message: string, details?: JsonObject): JsonObject {
  return {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    ...(details === undefined ? {} : { details }),
    code,
  };
}

function resourceDetails(resource: ResourceDef, name: string | undefined): JsonObject {
  return {
    ...(name ? { name } : {}),
    ...(resource.group === "" ? {} : { group: resource.group }),
    kind: resource.plural,
  };
}

const notFound = (resource: ResourceDef, name: string): JsonObject =>
  failure(404, "NotFound", `${qualified(resource)} "${name}" not found`, resourceDetails(resource, name));

const alreadyExists = (resource: ResourceDef, name: string): JsonObject =>
  failure(
    409,
    "AlreadyExists",
    `${qualified(resource)} "${name}" already exists`,
    resourceDetails(resource, name),
  );

function conflict(resource: ResourceDef, name: string, why: string): JsonObject {
  return failure(
    409,
    "Conflict",
    `Operation cannot be fulfilled on ${qualified(resource)} "${name}": ${why}`,
    resourceDetails(resource, name),
  );
}

function invalid(resource: ResourceDef, name: string, errors: readonly FieldError[]): JsonObject {
  const text = errors.map((e) => `${e.field}: ${e.message}`);
  return failure(
    422,
    "Invalid",
    `${resource.kind} "${name}" is invalid: ${text.length === 1 ? text[0] : `[${text.join(", ")}]`}`,
    {
      name,
      ...(resource.group === "" ? {} : { group: resource.group }),
      kind: resource.kind,
      causes: errors.map((e) => ({ reason: e.reason, message: e.message, field: e.field })),
    },
  );
}

const badRequest = (message: string): JsonObject => failure(400, "BadRequest", message);

const expired = (message: string): JsonObject => failure(410, "Expired", message);

const pageNotFound = (): JsonObject =>
  failure(404, "NotFound", "the server could not find the requested resource", {});

// ---------------------------------------------------------------------------------------------
// Selectors

interface LabelRequirement {
  readonly key: string;
  readonly op: "=" | "!=" | "exists" | "!exists" | "in" | "notin";
  readonly values: readonly string[];
}

interface FieldRequirement {
  readonly field: string;
  readonly op: "=" | "!=";
  readonly value: string;
}

interface Selector {
  readonly labels: readonly LabelRequirement[];
  readonly fields: readonly FieldRequirement[];
}

function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "(") depth++;
    else if (c === ")") depth--;
    else if (c === "," && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p !== "");
}

function parseLabelSelector(text: string): LabelRequirement[] | BadRequest {
  const requirements: LabelRequirement[] = [];
  for (const term of splitTopLevel(text)) {
    let match = /^([A-Za-z0-9][-A-Za-z0-9_./]*)\s+(in|notin)\s+\(([^)]*)\)$/.exec(term);
    if (match) {
      const values = (match[3] ?? "")
        .split(",")
        .map((v) => v.trim())
        .filter((v) => v !== "");
      requirements.push({ key: match[1] ?? "", op: match[2] === "in" ? "in" : "notin", values });
      continue;
    }
    match = /^([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(==|!=|=)\s*([-A-Za-z0-9_.]*)$/.exec(term);
    if (match) {
      requirements.push({
        key: match[1] ?? "",
        op: match[2] === "!=" ? "!=" : "=",
        values: [match[3] ?? ""],
      });
      continue;
    }
    match = /^(!?)([A-Za-z0-9][-A-Za-z0-9_./]*)$/.exec(term);
    if (match) {
      requirements.push({ key: match[2] ?? "", op: match[1] === "!" ? "!exists" : "exists", values: [] });
      continue;
    }
    return new BadRequest(
      `unable to parse requirement: found '${term}', expected: key, !key, key=value, key!=value, key in (...) or key notin (...)`,
    );
  }
  return requirements;
}

function parseFieldSelector(text: string, resource: ResourceDef): FieldRequirement[] | BadRequest {
  const requirements: FieldRequirement[] = [];
  for (const term of splitTopLevel(text)) {
    const match = /^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$/.exec(term);
    if (!match) return new BadRequest(`invalid selector: '${text}'; can't understand '${term}'`);
    const field = match[1] ?? "";
    if (!resource.fieldSelectors.includes(field)) {
      return new BadRequest(
        `"${field}" is not a known field selector: only ${resource.fieldSelectors.map((f) => `"${f}"`).join(", ")}`,
      );
    }
    requirements.push({ field, op: match[2] === "!=" ? "!=" : "=", value: match[3] ?? "" });
  }
  return requirements;
}

function matches(selector: Selector, object: JsonObject): boolean {
  const metadata = isObject(object.metadata) ? object.metadata : {};
  const labels = isObject(metadata.labels) ? metadata.labels : {};
  for (const r of selector.labels) {
    const value = labels[r.key];
    const has = typeof value === "string";
    switch (r.op) {
      case "exists":
        if (!has) return false;
        break;
      case "!exists":
        if (has) return false;
        break;
      case "=":
        if (value !== r.values[0]) return false;
        break;
      case "!=":
        if (value === r.values[0]) return false;
        break;
      case "in":
        if (!has || !r.values.includes(value)) return false;
        break;
      case "notin":
        if (has && r.values.includes(value)) return false;
        break;
    }
  }
  for (const r of selector.fields) {
    const value = fieldValue(object, r.field);
    if ((value === r.value) !== (r.op === "=")) return false;
  }
  return true;
}

function fieldValue(object: JsonObject, path: string): string {
  let current: Json | undefined = object;
  for (const part of path.split(".")) current = isObject(current) ? current[part] : undefined;
  return typeof current === "string" ? current : "";
}

// ---------------------------------------------------------------------------------------------
// The server

export class FakeKubeApiServer {
  /** `https://127.0.0.1:<port>` */
  readonly url: string;
  /** The cluster CA: what a pod finds in .../serviceaccount/ca.crt. */
  readonly caPem: string;

  /** Requests in arrival order of their answers. */
  readonly requests: RecordedRequest[] = [];
  /** Added before every request is handled. */
  latencyMs = 0;
  /** While set, every request waits unanswered until clearFaults (a partition that heals). */
  private held: { readonly until: Promise<void>; readonly release: () => void } | undefined;

  private readonly objects = new Map<string, Stored>();
  private readonly tokens = new Map<string, TokenRecord>();
  private readonly watchers = new Set<Watcher>();
  private readonly denials = new Set<DenyRule>();
  private statusFaults: StatusFault[] = [];
  private disconnectFaults: DisconnectFault[] = [];
  private events: ChangeEvent[] = [];
  private readonly snapshots = new Map<string, { rv: number; items: JsonObject[] }>();
  private rv = 0;
  /** Versions up to this one are gone: watching or continuing from them is 410 Expired. */
  private compactedThrough = 0;
  private bookmarkTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly absentGroups = new Set<string>();
  /** cert-manager's approver and CA issuer, acting on CertificateRequests and Issuers (cert-manager.ts). */
  readonly certManager: CertManagerSigner;

  private constructor(
    private readonly server: Server,
    private readonly port: number,
    caPem: string,
    private readonly ca: { key: KeyObject; der: Buffer },
    private readonly tokenKey: KeyObject,
    private readonly options: FakeKubeApiServerOptions,
  ) {
    this.url = `https://127.0.0.1:${port}`;
    this.caPem = caPem;
    this.certManager = new CertManagerSigner({
      object: (plural, namespace, name) => this.object(plural, namespace, name),
      writeStatus: (plural, namespace, name, status) => this.writeStatus(plural, namespace, name, status),
    });
  }

  static async start(options: FakeKubeApiServerOptions = {}): Promise<FakeKubeApiServer> {
    const ca = await makeCa();
    const serving = await issueCert(ca, "kube-apiserver", undefined, "serverAuth", {
      dns: [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
      ],
      ips: ["127.0.0.1", "::1"],
    });
    const server = createServer({
      key: serving.keyPem,
      cert: serving.certPem,
      ca: ca.pem,
      // Client certificates are one way to authenticate, never a requirement.
      requestCert: true,
      rejectUnauthorized: false,
    });
    server.listen(0, "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      server.once("listening", resolve);
      server.once("error", reject);
    });
    const { port } = server.address() as AddressInfo;
    const fake = new FakeKubeApiServer(
      server,
      port,
      ca.pem,
      { key: ca.key, der: ca.der },
      (await generateKeyPair("ecdsa-p256")).privateKey,
      options,
    );
    server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      void fake.handle(req, res);
    });
    for (const ns of [
      "default",
      "kube-system",
      "kube-public",
      "kube-node-lease",
      ...(options.namespaces ?? []),
    ]) {
      fake.seed("namespaces", { metadata: { name: ns } });
    }
    fake.bookmarkTimer = setInterval(() => fake.sendBookmarks(), options.bookmarkIntervalMs ?? 60_000);
    fake.bookmarkTimer.unref();
    return fake;
  }

  // ----- identities -------------------------------------------------------------------------

  /** Accepts `token` as `user`. By default the token is good for the API itself. */
  addToken(
    token: string,
    user: FakeUser,
    options: { audiences?: readonly string[]; expiresAt?: Date } = {},
  ): void {
    this.tokens.set(token, {
      user,
      audiences: options.audiences ?? [API_AUDIENCE],
      ...(options.expiresAt ? { expiresAt: options.expiresAt.getTime() } : {}),
      revoked: false,
    });
  }

  /** As when the bound pod or ServiceAccount is deleted. */
  revokeToken(token: string): void {
    const record = this.tokens.get(token);
    if (record) record.revoked = true;
  }

  /** The user a ServiceAccount token authenticates as (pod-bound when `pod` is given). */
  static serviceAccountUser(namespace: string, name: string, pod?: { name: string; uid: string }): FakeUser {
    return {
      username: `system:serviceaccount:${namespace}:${name}`,
      uid: uuidFrom(`sa:${namespace}:${name}`),
      groups: ["system:serviceaccounts", `system:serviceaccounts:${namespace}`, "system:authenticated"],
      ...(pod
        ? {
            extra: {
              "authentication.kubernetes.io/pod-name": [pod.name],
              "authentication.kubernetes.io/pod-uid": [pod.uid],
            },
          }
        : {}),
    };
  }

  /** A kubeconfig (JSON) for this server and a bearer token: what a client outside the cluster is handed. */
  kubeconfig(token: string): string {
    return JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      "current-context": "fake",
      clusters: [
        {
          name: "fake",
          cluster: {
            server: this.url,
            "certificate-authority-data": Buffer.from(this.caPem).toString("base64"),
          },
        },
      ],
      users: [{ name: "user", user: { token } }],
      contexts: [{ name: "fake", context: { cluster: "fake", user: "user" } }],
    });
  }

  /**
   * A projected ServiceAccount token as the kubelet mounts it: a signed JWT with the real claims
   * (aud, exp, iat, nbf, iss, sub, kubernetes.io), registered with this server.
   */
  serviceAccountToken(
    namespace: string,
    name: string,
    options: { audiences?: readonly string[]; expiresAt?: Date; pod?: { name: string; uid: string } } = {},
  ): string {
    const audiences = options.audiences ?? [API_AUDIENCE];
    const now = Math.floor(Date.now() / 1000);
    const exp = options.expiresAt ? Math.floor(options.expiresAt.getTime() / 1000) : now + 3600;
    const jti = randomUUID();
    const user = FakeKubeApiServer.serviceAccountUser(namespace, name, options.pod);
    const claims = {
      aud: audiences,
      exp,
      iat: now,
      iss: API_AUDIENCE,
      jti,
      "kubernetes.io": {
        namespace,
        ...(options.pod ? { pod: options.pod } : {}),
        serviceaccount: { name, uid: user.uid },
      },
      nbf: now,
      sub: user.username,
    };
    const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString("base64url");
    const signingInput = `${encode({ alg: "ES256", kid: this.tokenKeyId() })}.${encode(claims)}`;
    const signature = sign("sha256", Buffer.from(signingInput), {
      key: this.tokenKey,
      dsaEncoding: "ieee-p1363",
    });
    const token = `${signingInput}.${signature.toString("base64url")}`;
    const extra = { ...(user.extra ?? {}), "authentication.kubernetes.io/credential-id": [`JTI=${jti}`] };
    this.addToken(token, { ...user, extra }, { audiences, expiresAt: new Date(exp * 1000) });
    return token;
  }

  /** A client certificate signed by the cluster CA: CN is the user name, O the group. */
  issueClientCertificate(username: string, group?: string): Promise<{ certPem: string; keyPem: string }> {
    return issueCert({ ...this.ca, pem: this.caPem }, username, group, "clientAuth", undefined);
  }

  // ----- faults -----------------------------------------------------------------------------

  /**
   * The next `count` matching requests get `status` (500, 503, 429, 504…) instead of an answer; 409
   * answers AlreadyExists to a create and Conflict to anything else, with nothing written.
   */
  failNext(
    count: number,
    options: { status: number; retryAfterSeconds?: number; message?: string; match?: FaultMatch },
  ): void {
    this.statusFaults.push({
      remaining: count,
      match: options.match ?? {},
      status: options.status,
      ...(options.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: options.retryAfterSeconds }),
      ...(options.message === undefined ? {} : { message: options.message }),
    });
  }

  /**
   * The next `count` matching requests see their connection drop without an answer; with
   * `afterWrite` the change is made first, as when a response is lost on the way back.
   */
  disconnectNext(count: number, options: { match?: FaultMatch; afterWrite?: boolean } = {}): void {
    this.disconnectFaults.push({
      remaining: count,
      match: options.match ?? {},
      afterWrite: options.afterWrite ?? false,
    });
  }

  /** RBAC denies matching requests with a real 403 until the returned function is called. */
  deny(rule: DenyRule): () => void {
    this.denials.add(rule);
    return () => {
      this.denials.delete(rule);
    };
  }

  /**
   * Every request from now on (and any already waiting on latency) gets no answer until
   * clearFaults: the connection stays open and silent, as behind a network partition. When it
   * heals, the held requests are handled normally (a client that gave up meanwhile has gone).
   */
  holdRequests(): void {
    if (this.held !== undefined) return;
    let release = () => {};
    const until = new Promise<void>((resolve) => {
      release = resolve;
    });
    this.held = { until, release };
  }

  clearFaults(): void {
    this.held?.release();
    this.held = undefined;
    this.statusFaults = [];
    this.disconnectFaults = [];
    this.denials.clear();
    this.latencyMs = 0;
  }

  /** Breaks every open watch mid-stream (connection reset). */
  dropWatches(): void {
    for (const watcher of this.watchers) watcher.res.socket?.destroy();
    this.watchers.clear();
  }

  /** Ends every open watch cleanly, as when timeoutSeconds runs out. */
  endWatches(): void {
    for (const watcher of this.watchers) watcher.res.end();
    this.watchers.clear();
  }

  /** Forgets all history: any resourceVersion seen so far is now too old to watch from. */
  compact(): void {
    this.compactedThrough = this.rv;
    this.events = [];
    this.snapshots.clear();
  }

  /** The API server goes away (connections refused) for `downForMs`, then listens on the same port. */
  async restart(downForMs: number): Promise<void> {
    this.watchers.clear();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
    await sleep(downForMs);
    // A test that failed meanwhile has closed us; coming back would keep its process alive.
    if (this.closed) return;
    this.server.listen(this.port, "127.0.0.1");
    await new Promise<void>((resolve) => this.server.once("listening", resolve));
  }

  /** A BOOKMARK on every watch that allows them, now. */
  sendBookmarks(): void {
    for (const watcher of this.watchers) {
      if (!watcher.bookmarks) continue;
      this.writeEvent(watcher.res, "BOOKMARK", {
        kind: watcher.resource.kind,
        apiVersion: apiVersionOf(watcher.resource),
        metadata: { resourceVersion: String(this.rv), creationTimestamp: null },
      });
    }
  }

  // ----- state ------------------------------------------------------------------------------

  get resourceVersion(): string {
    return String(this.rv);
  }

  /** A copy of a stored object as GET would return it, or undefined. */
  object(resource: string, namespace: string | undefined, name: string): JsonObject | undefined {
    const def = resourceByPlural(resource);
    const stored = this.objects.get(storeKey(def, namespace ?? "", name));
    return stored ? clone(stored.object) : undefined;
  }

  /** Stored objects of a kind (optionally in one namespace), as copies. */
  objectsOf(resource: string, namespace?: string): JsonObject[] {
    const def = resourceByPlural(resource);
    return this.storedOf(def, namespace).map((s) => clone(s.object));
  }

  /** Creates an object directly (no auth, no faults), as an operator with kubectl would. */
  seed(resource: string, object: JsonObject): JsonObject {
    const def = resourceByPlural(resource);
    const metadata = isObject(object.metadata) ? object.metadata : {};
    const namespace = def.namespaced ? String(metadata.namespace ?? "default") : undefined;
    const result = this.createObject(def, namespace, clone(object));
    if (isFailure(result)) throw new Error(`seed ${resource}: ${String(result.message)}`);
    return clone(result);
  }

  /**
   * Whether the API group is served: false answers every path under it with the generic 404, as a
   * cluster without those CRDs does (e.g. "cert-manager.io" before cert-manager is installed).
   */
  setGroupInstalled(group: string, installed: boolean): void {
    if (installed) this.absentGroups.delete(group);
    else this.absentGroups.add(group);
  }

  /** A write to the status subresource, as a controller makes it; returns the object or the failure Status. */
  writeStatus(resource: string, namespace: string | undefined, name: string, status: Json): JsonObject {
    const def = resourceByPlural(resource);
    const current = this.objects.get(storeKey(def, namespace ?? "", name));
    if (current === undefined) return notFound(def, name);
    const next = { ...clone(current.object), status: clone(status) };
    return this.updateObject(def, namespace, name, next, "update", "status");
  }

  /** Requests matching all given fields. */
  count(
    match: Partial<
      Pick<RecordedRequest, "verb" | "resource" | "namespace" | "name" | "status" | "user">
    > = {},
  ): number {
    return this.requests.filter((r) =>
      Object.entries(match).every(([key, value]) => r[key as keyof RecordedRequest] === value),
    ).length;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.bookmarkTimer);
    this.watchers.clear();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  // ----- request handling -------------------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "https://fake");
    const ctx: Context = { req, res, path: url.pathname + url.search, recorded: false };
    try {
      if (this.latencyMs > 0) await sleep(this.latencyMs);
      if (this.held !== undefined) await this.held.until;
      if (url.pathname === "/version" && req.method === "GET") {
        this.reply(ctx, 200, {
          major: "1",
          minor: "30",
          gitVersion: "v1.30.0-fake",
          platform: "linux/amd64",
        });
        return;
      }
      const user = this.authenticate(req);
      if (user === undefined) {
        this.reply(ctx, 401, {
          kind: "Status",
          apiVersion: "v1",
          metadata: {},
          status: "Failure",
          message: "Unauthorized",
          reason: "Unauthorized",
          code: 401,
        });
        return;
      }
      ctx.user = user;
      const route = parseRoute(req.method ?? "GET", url);
      if (!("resource" in route)) {
        this.reply(ctx, route.status, route.body);
        return;
      }
      if (this.absentGroups.has(route.resource.group)) {
        // A cluster without the CRDs has no such API group: the generic 404 page.
        this.reply(ctx, 404, pageNotFound());
        return;
      }
      ctx.route = route;
      const denied = this.authorize(user, route);
      if (denied) {
        this.reply(ctx, 403, denied);
        return;
      }
      const fault = takeFault(this.statusFaults, route);
      if (fault) {
        this.replyFault(ctx, fault);
        return;
      }
      const disconnect = takeFault(this.disconnectFaults, route);
      if (disconnect && !disconnect.afterWrite) {
        this.hangUp(ctx);
        return;
      }
      const body = await readBody(req);
      if (body === "too-large") {
        this.reply(
          ctx,
          413,
          failure(413, "RequestEntityTooLarge", "the server has received a request that is too large"),
        );
        return;
      }
      const outcome = this.dispatch(ctx, route, body);
      if (outcome === undefined) return; // a watch: it answers as it goes
      if (disconnect?.afterWrite) {
        this.hangUp(ctx);
        return;
      }
      this.reply(ctx, outcome.status, outcome.body, outcome.headers);
    } catch (error) {
      if (!res.headersSent) {
        this.reply(ctx, 500, failure(500, "InternalError", `Internal error occurred: ${String(error)}`));
      } else {
        res.destroy();
      }
    }
  }

  private dispatch(
    ctx: Context,
    route: Route,
    body: string,
  ): { status: number; body: JsonObject; headers?: Record<string, string> } | undefined {
    const { resource, verb, namespace, name } = route;
    if (resource === TOKEN_REVIEWS) return this.tokenReview(body);
    switch (verb) {
      case "get": {
        const stored = this.objects.get(storeKey(resource, namespace ?? "", name ?? ""));
        return stored
          ? { status: 200, body: stored.object }
          : { status: 404, body: notFound(resource, name ?? "") };
      }
      case "list":
        return this.list(route);
      case "watch":
        this.watch(ctx, route);
        return undefined;
      case "create": {
        const parsed = parseObject(body, resource);
        if ("rejected" in parsed) return { status: 400, body: parsed.rejected };
        const result = this.createObject(resource, namespace, parsed.object);
        return { status: isFailure(result) ? Number(result.code) : 201, body: result };
      }
      case "update": {
        const parsed = parseObject(body, resource);
        if ("rejected" in parsed) return { status: 400, body: parsed.rejected };
        const result = this.updateObject(
          resource,
          namespace,
          name ?? "",
          parsed.object,
          "update",
          route.subresource,
        );
        return { status: isFailure(result) ? Number(result.code) : 200, body: result };
      }
      case "patch":
        return this.patch(ctx, route, body);
      case "delete":
        return this.deleteObject(resource, namespace, name ?? "", body);
    }
  }

  private authenticate(req: IncomingMessage): FakeUser | undefined {
    const socket = req.socket as TLSSocket;
    const header = req.headers.authorization;
    if (header !== undefined) {
      const match = /^Bearer\s+(\S+)$/i.exec(header);
      const record = match ? this.tokens.get(match[1] ?? "") : undefined;
      if (record && this.tokenProblem(record, [API_AUDIENCE]) === undefined) {
        return { ...record.user, groups: withAuthenticated(record.user.groups) };
      }
      // A presented but bad token is 401 even when a client certificate would have done.
      return undefined;
    }
    if (socket.authorized) {
      const cert = socket.getPeerX509Certificate();
      if (cert) {
        const cn = /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
        const org = /(?:^|\n)O=([^\n]+)/.exec(cert.subject)?.[1];
        if (cn) return { username: cn, groups: withAuthenticated(org ? [org] : []) };
      }
    }
    if (this.options.anonymousAuth === true)
      return { username: "system:anonymous", groups: ["system:unauthenticated"] };
    return undefined;
  }

  private tokenProblem(record: TokenRecord, audiences: readonly string[]): string | undefined {
    if (record.revoked) return "token has been invalidated";
    if (record.expiresAt !== undefined && record.expiresAt <= Date.now())
      return "service account token has expired";
    if (!record.audiences.some((a) => audiences.includes(a))) {
      return `token audiences ${JSON.stringify(record.audiences)} is invalid for the target audiences ${JSON.stringify(audiences)}`;
    }
    return undefined;
  }

  /** The RBAC authorizer's 403, message and details exactly as the API server builds them. */
  private authorize(user: FakeUser, route: Route): JsonObject | undefined {
    // For the namespaces resource, the request's namespace attribute is the namespace itself.
    const namespace = route.resource === NAMESPACES ? route.name : route.namespace;
    const denied = [...this.denials].some(
      (rule) =>
        (rule.user === undefined || rule.user === user.username) &&
        matchesRoute(rule, { ...route, ...(namespace === undefined ? {} : { namespace }) }),
    );
    if (denied || !this.rbacAllows(user, route, namespace)) {
      const scope = namespace ? `in the namespace "${namespace}"` : "at the cluster scope";
      const why = `User "${user.username}" cannot ${route.verb} resource "${route.resource.plural}" in API group "${route.resource.group}" ${scope}`;
      const subject = route.name ? `${qualified(route.resource)} "${route.name}"` : qualified(route.resource);
      return failure(
        403,
        "Forbidden",
        `${subject} is forbidden: ${why}`,
        resourceDetails(route.resource, route.name),
      );
    }
    return undefined;
  }

  /**
   * With `rbac: true`, the RBAC authorizer over the stored Roles, ClusterRoles and their bindings
   * (kubernetes.io/docs/reference/access-authn-authz/rbac). Members of system:masters pass, as in a
   * real cluster. resourceNames match requests naming one object: get/update/patch/delete by path,
   * list/watch with `fieldSelector=metadata.name=…`; never create (and never a collection).
   */
  private rbacAllows(user: FakeUser, route: Route, namespace: string | undefined): boolean {
    if (this.options.rbac !== true || user.groups?.includes("system:masters")) return true;
    const fieldName = /^metadata\.name==?([^,]+)$/.exec(route.query.get("fieldSelector") ?? "")?.[1];
    const name = route.verb === "create" ? undefined : (route.name ?? fieldName);
    const groups = user.groups ?? [];
    const binds = (binding: JsonObject) =>
      (Array.isArray(binding.subjects) ? binding.subjects : []).some(
        (s) =>
          isObject(s) &&
          ((s.kind === "User" && s.name === user.username) ||
            (s.kind === "Group" && groups.includes(String(s.name))) ||
            (s.kind === "ServiceAccount" &&
              user.username === `system:serviceaccount:${String(s.namespace)}:${String(s.name)}`)),
      );
    const allows = (rule: Json) => {
      if (!isObject(rule)) return false;
      const has = (list: Json | undefined, value: string) =>
        Array.isArray(list) && (list.includes(value) || list.includes("*"));
      const names = Array.isArray(rule.resourceNames) ? rule.resourceNames : [];
      return (
        has(rule.verbs, route.verb) &&
        has(rule.apiGroups, route.resource.group) &&
        has(rule.resources, route.resource.plural) &&
        (names.length === 0 || (name !== undefined && names.includes(name)))
      );
    };
    for (const stored of this.objects.values()) {
      const cluster = stored.resource === CLUSTER_ROLE_BINDINGS;
      const local =
        stored.resource === ROLE_BINDINGS && namespace !== undefined && stored.namespace === namespace;
      if ((!cluster && !local) || !binds(stored.object)) continue;
      const ref = isObject(stored.object.roleRef) ? stored.object.roleRef : {};
      const role =
        ref.kind === "ClusterRole"
          ? this.objects.get(storeKey(CLUSTER_ROLES, "", String(ref.name)))
          : this.objects.get(storeKey(ROLES, stored.namespace, String(ref.name)));
      const rules = role && Array.isArray(role.object.rules) ? role.object.rules : [];
      if (rules.some(allows)) return true;
    }
    return false;
  }

  private tokenReview(body: string): { status: number; body: JsonObject } {
    const parsed = parseObject(body, TOKEN_REVIEWS);
    if ("rejected" in parsed) return { status: 400, body: parsed.rejected };
    const review = parsed.object;
    const spec = isObject(review.spec) ? review.spec : {};
    const token = typeof spec.token === "string" ? spec.token : "";
    if (token === "")
      return { status: 400, body: badRequest("token is required for TokenReview in authentication") };
    const requested = Array.isArray(spec.audiences)
      ? spec.audiences.filter((a): a is string => typeof a === "string")
      : [];
    // No audiences in the request means "the API server's own".
    const audiences = requested.length > 0 ? requested : [API_AUDIENCE];
    const record = this.tokens.get(token);
    const problem = record === undefined ? "token lookup failed" : this.tokenProblem(record, audiences);
    let status: JsonObject;
    if (record === undefined || problem !== undefined) {
      status = { user: {}, error: `[invalid bearer token, ${problem}]` };
    } else {
      status = {
        authenticated: true,
        user: {
          username: record.user.username,
          ...(record.user.uid ? { uid: record.user.uid } : {}),
          groups: [...withAuthenticated(record.user.groups)],
          ...(record.user.extra ? { extra: toJson(record.user.extra) } : {}),
        },
        audiences: audiences.filter((a) => record.audiences.includes(a)),
      };
    }
    return {
      status: 201,
      body: {
        kind: "TokenReview",
        apiVersion: "authentication.k8s.io/v1",
        metadata: { creationTimestamp: null },
        spec: { token, ...(requested.length > 0 ? { audiences: requested } : {}) },
        status,
      },
    };
  }

  // ----- storage ----------------------------------------------------------------------------

  private storedOf(resource: ResourceDef, namespace: string | undefined): Stored[] {
    const list: Stored[] = [];
    for (const stored of this.objects.values()) {
      if (stored.resource !== resource) continue;
      if (namespace !== undefined && stored.namespace !== namespace) continue;
      list.push(stored);
    }
    // etcd order: by key, i.e. namespace then name.
    return list.sort((a, b) => compareKeys(a, b));
  }

  private createObject(resource: ResourceDef, namespace: string | undefined, object: JsonObject): JsonObject {
    const metadata: JsonObject = isObject(object.metadata) ? { ...object.metadata } : {};
    object.metadata = metadata;
    if (resource.namespaced) {
      if (metadata.namespace !== undefined && metadata.namespace !== "" && metadata.namespace !== namespace) {
        return badRequest(
          "the namespace of the provided object does not match the namespace sent on the request",
        );
      }
      if (!this.objects.has(storeKey(NAMESPACES, "", namespace ?? ""))) {
        return notFound(NAMESPACES, namespace ?? "");
      }
      metadata.namespace = namespace ?? "";
    } else {
      delete metadata.namespace;
    }
    if (
      (typeof metadata.name !== "string" || metadata.name === "") &&
      typeof metadata.generateName === "string"
    ) {
      metadata.name = metadata.generateName + randomBytes(4).toString("hex").slice(0, 5);
    }
    const name = typeof metadata.name === "string" ? metadata.name : "";
    if (name === "") {
      return invalid(resource, "", [
        {
          reason: "FieldValueRequired",
          field: "metadata.name",
          message: "Required value: name or generateName is required",
        },
      ]);
    }
    const nameError = nameProblem(resource, name);
    if (nameError) return invalid(resource, name, [nameError]);
    if (typeof metadata.resourceVersion === "string" && metadata.resourceVersion !== "") {
      return badRequest("resourceVersion should not be set on objects to be created");
    }
    // With a status subresource, status is written only through /status (CRD semantics).
    if (resource.statusSubresource === true) delete object.status;
    const prepared = resource.prepare?.(object, undefined) ?? [];
    if (prepared instanceof BadRequest) return badRequest(prepared.message);
    if (prepared.length > 0) return invalid(resource, name, prepared);
    const key = storeKey(resource, namespace ?? "", name);
    if (this.objects.has(key)) return alreadyExists(resource, name);
    metadata.uid = randomUUID();
    metadata.creationTimestamp = new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
    delete metadata.deletionTimestamp;
    const stored = this.commit("ADDED", resource, namespace ?? "", withTypeMeta(resource, object));
    return stored;
  }

  private updateObject(
    resource: ResourceDef,
    namespace: string | undefined,
    name: string,
    object: JsonObject,
    verb: "update" | "patch",
    subresource?: "status",
  ): JsonObject {
    const metadata: JsonObject = isObject(object.metadata) ? { ...object.metadata } : {};
    object.metadata = metadata;
    if (metadata.name !== undefined && metadata.name !== name) {
      return badRequest(
        `the name of the object (${String(metadata.name)}) does not match the name on the URL (${name})`,
      );
    }
    if (
      resource.namespaced &&
      metadata.namespace !== undefined &&
      metadata.namespace !== "" &&
      metadata.namespace !== namespace
    ) {
      return badRequest(
        "the namespace of the provided object does not match the namespace sent on the request",
      );
    }
    const key = storeKey(resource, namespace ?? "", name);
    const current = this.objects.get(key);
    if (current === undefined) return notFound(resource, name);
    const currentMeta = current.object.metadata as JsonObject;
    const precondition = metadata.resourceVersion;
    if (
      typeof precondition === "string" &&
      precondition !== "" &&
      precondition !== currentMeta.resourceVersion
    ) {
      return conflict(
        resource,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
      );
    }
    if (verb === "update" && precondition !== undefined && typeof precondition !== "string") {
      return badRequest("metadata.resourceVersion must be a string");
    }
    // Server-owned metadata survives whatever the client sent.
    metadata.name = name;
    if (resource.namespaced) metadata.namespace = namespace ?? "";
    metadata.uid = currentMeta.uid ?? null;
    metadata.creationTimestamp = currentMeta.creationTimestamp ?? null;
    metadata.resourceVersion = currentMeta.resourceVersion ?? null;
    if (resource.statusSubresource === true) {
      // The main resource ignores status; /status changes status alone (labels and spec are kept).
      if (subresource === "status") {
        const status = object.status;
        object = { ...clone(current.object), metadata: { ...(current.object.metadata as JsonObject) } };
        if (status === undefined) delete object.status;
        else object.status = status;
      } else if (current.object.status === undefined) {
        delete object.status;
      } else {
        object.status = clone(current.object.status);
      }
    }
    const prepared = subresource === "status" ? [] : (resource.prepare?.(object, current.object) ?? []);
    if (prepared instanceof BadRequest) return badRequest(prepared.message);
    if (prepared.length > 0) return invalid(resource, name, prepared);
    const next = withTypeMeta(resource, object);
    // An update that changes nothing is no write: etcd is not touched and the version stays.
    if (canonical(next) === canonical(current.object)) return current.object;
    return this.commit("MODIFIED", resource, namespace ?? "", next, current.object);
  }

  private patch(ctx: Context, route: Route, body: string): { status: number; body: JsonObject } {
    const { resource, namespace, name = "" } = route;
    const type = (ctx.req.headers["content-type"] ?? "").split(";")[0]?.trim();
    if (type !== "application/merge-patch+json" && type !== "application/strategic-merge-patch+json") {
      return {
        status: 415,
        body: failure(
          415,
          "UnsupportedMediaType",
          `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (this fake serves no json-patch or apply)`,
        ),
      };
    }
    let patch: Json;
    try {
      patch = JSON.parse(body) as Json;
    } catch (error) {
      return { status: 400, body: badRequest(`error decoding patch: ${String(error)}`) };
    }
    if (!isObject(patch)) return { status: 400, body: badRequest("a merge patch must be a JSON object") };
    const current = this.objects.get(storeKey(resource, namespace ?? "", name));
    if (current === undefined) return { status: 404, body: notFound(resource, name) };
    // The merged object carries the current version unless the patch names one, which is then a precondition.
    const merged = mergePatch(clone(current.object), patch);
    if (!isObject(merged)) return { status: 400, body: badRequest("the patch result is not an object") };
    const result = this.updateObject(resource, namespace, name, merged, "patch", route.subresource);
    return { status: isFailure(result) ? Number(result.code) : 200, body: result };
  }

  private deleteObject(
    resource: ResourceDef,
    namespace: string | undefined,
    name: string,
    body: string,
  ): { status: number; body: JsonObject } {
    const key = storeKey(resource, namespace ?? "", name);
    const current = this.objects.get(key);
    if (current === undefined) return { status: 404, body: notFound(resource, name) };
    let options: Json = {};
    if (body.trim() !== "") {
      try {
        options = JSON.parse(body) as Json;
      } catch (error) {
        return { status: 400, body: badRequest(`error decoding DeleteOptions: ${String(error)}`) };
      }
    }
    const preconditions = isObject(options) && isObject(options.preconditions) ? options.preconditions : {};
    const meta = current.object.metadata as JsonObject;
    if (typeof preconditions.uid === "string" && preconditions.uid !== meta.uid) {
      return {
        status: 409,
        body: conflict(
          resource,
          name,
          `Precondition failed: UID in precondition: ${preconditions.uid}, UID in object meta: ${String(meta.uid)}`,
        ),
      };
    }
    if (
      typeof preconditions.resourceVersion === "string" &&
      preconditions.resourceVersion !== meta.resourceVersion
    ) {
      return {
        status: 409,
        body: conflict(
          resource,
          name,
          `Precondition failed: ResourceVersion in precondition: ${preconditions.resourceVersion}, ResourceVersion in object meta: ${String(meta.resourceVersion)}`,
        ),
      };
    }
    if (resource === NAMESPACES) {
      // Simplified: the real server keeps the namespace in Terminating until its content is gone;
      // here the content and the namespace go at once, each with its DELETED event.
      for (const stored of [...this.objects.values()]) {
        if (stored.resource.namespaced && stored.namespace === name) {
          this.remove(
            stored.resource,
            stored.namespace,
            (stored.object.metadata as JsonObject).name as string,
          );
        }
      }
      const terminating = clone(current.object);
      (terminating.metadata as JsonObject).deletionTimestamp = new Date()
        .toISOString()
        .replace(/\.\d{3}Z$/, "Z");
      terminating.status = { phase: "Terminating" };
      this.remove(resource, "", name);
      return { status: 200, body: terminating };
    }
    this.remove(resource, namespace ?? "", name);
    return {
      status: 200,
      body: {
        kind: "Status",
        apiVersion: "v1",
        metadata: {},
        status: "Success",
        details: { ...resourceDetails(resource, name), uid: meta.uid ?? null },
      },
    };
  }

  private remove(resource: ResourceDef, namespace: string, name: string): void {
    const key = storeKey(resource, namespace, name);
    const current = this.objects.get(key);
    if (current === undefined) return;
    this.rv++;
    this.objects.delete(key);
    // The DELETED event carries the object at the deletion's version.
    const object = clone(current.object);
    (object.metadata as JsonObject).resourceVersion = String(this.rv);
    this.record({ rv: this.rv, type: "DELETED", resource, namespace, object, previous: current.object });
  }

  private commit(
    type: "ADDED" | "MODIFIED",
    resource: ResourceDef,
    namespace: string,
    object: JsonObject,
    previous?: JsonObject,
  ): JsonObject {
    this.rv++;
    (object.metadata as JsonObject).resourceVersion = String(this.rv);
    const name = (object.metadata as JsonObject).name as string;
    this.objects.set(storeKey(resource, namespace, name), { resource, namespace, object });
    this.record({ rv: this.rv, type, resource, namespace, object, ...(previous ? { previous } : {}) });
    return object;
  }

  private record(event: ChangeEvent): void {
    this.events.push(event);
    const retained = this.options.retainedEvents ?? 1000;
    while (this.events.length > retained) {
      const dropped = this.events.shift();
      if (dropped) this.compactedThrough = dropped.rv;
    }
    for (const [id, snapshot] of this.snapshots) {
      if (snapshot.rv < this.compactedThrough) this.snapshots.delete(id);
    }
    for (const watcher of this.watchers) this.deliver(watcher, event);
    this.certManager.observe(event);
  }

  // ----- list and watch ---------------------------------------------------------------------

  private selector(route: Route): Selector | BadRequest {
    const labels = parseLabelSelector(route.query.get("labelSelector") ?? "");
    if (labels instanceof BadRequest) return labels;
    const fields = parseFieldSelector(route.query.get("fieldSelector") ?? "", route.resource);
    if (fields instanceof BadRequest) return fields;
    return { labels, fields };
  }

  private list(route: Route): { status: number; body: JsonObject } {
    const { resource, query } = route;
    const selector = this.selector(route);
    if (selector instanceof BadRequest) return { status: 400, body: badRequest(selector.message) };
    const requested = query.get("resourceVersion");
    if (requested && requested !== "0") {
      const wanted = Number(requested);
      if (!Number.isSafeInteger(wanted)) {
        return {
          status: 400,
          body: badRequest(`resourceVersion: Invalid value: "${requested}": must be an integer`),
        };
      }
      if (wanted > this.rv) {
        return {
          status: 504,
          body: failure(
            504,
            "Timeout",
            `Timeout: Too large resource version: ${wanted}, current: ${this.rv}`,
            {
              causes: [{ reason: "ResourceVersionTooLarge", message: "Too large resource version" }],
              retryAfterSeconds: 1,
            },
          ),
        };
      }
    }
    const limit = Number(query.get("limit") ?? "0");
    const token = query.get("continue");
    let rv = this.rv;
    let items: JsonObject[];
    let start = 0;
    let snapshotId: string;
    if (token) {
      const decoded = decodeContinue(token);
      if (decoded === undefined)
        return { status: 400, body: badRequest("continue key is not valid: illegal base64 data") };
      const snapshot = this.snapshots.get(decoded.id);
      if (decoded.rv < this.compactedThrough || snapshot === undefined) {
        return {
          status: 410,
          body: expired(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
          ),
        };
      }
      ({ rv, items } = snapshot);
      start = decoded.start;
      snapshotId = decoded.id;
    } else {
      items = this.storedOf(resource, route.namespace)
        .map((s) => s.object)
        .filter((o) => matches(selector, o))
        .map(stripTypeMeta);
      snapshotId = randomUUID();
    }
    const page = limit > 0 ? items.slice(start, start + limit) : items.slice(start);
    const next = start + page.length;
    const metadata: JsonObject = { resourceVersion: String(rv) };
    if (next < items.length) {
      // Later pages are served from the same snapshot, as etcd serves them from the same revision.
      this.snapshots.set(snapshotId, { rv, items });
      metadata.continue = encodeContinue({ rv, start: next, id: snapshotId });
      if (selector.labels.length === 0 && selector.fields.length === 0)
        metadata.remainingItemCount = items.length - next;
    } else {
      this.snapshots.delete(snapshotId);
    }
    return {
      status: 200,
      body: { kind: `${resource.kind}List`, apiVersion: apiVersionOf(resource), metadata, items: page },
    };
  }

  private watch(ctx: Context, route: Route): void {
    const { res } = ctx;
    const selector = this.selector(route);
    if (selector instanceof BadRequest) {
      this.reply(ctx, 400, badRequest(selector.message));
      return;
    }
    const requested = route.query.get("resourceVersion") ?? "";
    const from = requested === "" || requested === "0" ? undefined : Number(requested);
    if (from !== undefined && !Number.isSafeInteger(from)) {
      this.reply(ctx, 400, badRequest(`resourceVersion: Invalid value: "${requested}": must be an integer`));
      return;
    }
    res.writeHead(200, { "content-type": "application/json", "cache-control": "no-cache, private" });
    res.flushHeaders();
    this.recordRequest(ctx, 200);
    // A version the server no longer keeps is reported inside the stream, after a 200, as an
    // ERROR event carrying the 410 Status; then the stream ends.
    if (from !== undefined && from < this.compactedThrough) {
      this.writeEvent(
        res,
        "ERROR",
        expired(`too old resource version: ${from} (${this.compactedThrough + 1})`),
      );
      res.end();
      return;
    }
    const watcher: Watcher = {
      resource: route.resource,
      ...(route.namespace === undefined ? {} : { namespace: route.namespace }),
      selector,
      res,
      bookmarks: ["true", "1"].includes(route.query.get("allowWatchBookmarks") ?? ""),
    };
    if (from === undefined) {
      // No version: the current state, as synthetic ADDED events, then changes.
      for (const stored of this.storedOf(route.resource, route.namespace)) {
        if (matches(selector, stored.object)) this.writeEvent(res, "ADDED", stored.object);
      }
    } else {
      for (const event of this.events) if (event.rv > from) this.deliver(watcher, event);
    }
    this.watchers.add(watcher);
    const timeoutSeconds = Number(route.query.get("timeoutSeconds") ?? "0");
    const timer =
      timeoutSeconds > 0
        ? setTimeout(() => {
            this.watchers.delete(watcher);
            res.end();
          }, timeoutSeconds * 1000)
        : undefined;
    res.on("close", () => {
      clearTimeout(timer);
      this.watchers.delete(watcher);
    });
  }

  /** Label-filtered watches see objects enter (ADDED) and leave (DELETED) the selection. */
  private deliver(watcher: Watcher, event: ChangeEvent): void {
    if (event.resource !== watcher.resource) return;
    if (watcher.namespace !== undefined && event.namespace !== watcher.namespace) return;
    const now = matches(watcher.selector, event.object);
    if (event.type === "MODIFIED") {
      const before = event.previous !== undefined && matches(watcher.selector, event.previous);
      if (now && before) this.writeEvent(watcher.res, "MODIFIED", event.object);
      else if (now) this.writeEvent(watcher.res, "ADDED", event.object);
      else if (before) this.writeEvent(watcher.res, "DELETED", event.object);
      return;
    }
    if (now) this.writeEvent(watcher.res, event.type, event.object);
  }

  private writeEvent(res: ServerResponse, type: string, object: JsonObject): void {
    if (res.writableEnded || res.destroyed) return;
    res.write(`${JSON.stringify({ type, object })}\n`);
  }

  // ----- answers ----------------------------------------------------------------------------

  private reply(ctx: Context, status: number, body: JsonObject, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body);
    ctx.res.writeHead(status, {
      "content-type": "application/json",
      "cache-control": "no-cache, private",
      "audit-id": randomUUID(),
      "content-length": String(Buffer.byteLength(text)),
      ...headers,
    });
    ctx.res.end(text);
    this.recordRequest(ctx, status);
  }

  private replyFault(ctx: Context, fault: StatusFault): void {
    const headers: Record<string, string> = {};
    if (fault.retryAfterSeconds !== undefined) headers["retry-after"] = String(fault.retryAfterSeconds);
    let body: JsonObject;
    switch (fault.status) {
      case 429:
        body = failure(
          429,
          "TooManyRequests",
          fault.message ?? "Too many requests, please try again later.",
          {
            ...(fault.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: fault.retryAfterSeconds }),
          },
        );
        break;
      case 503:
        body = failure(
          503,
          "ServiceUnavailable",
          fault.message ?? "the server is currently unable to handle the request",
        );
        break;
      case 409: {
        // What a lost write looks like from the client: the object is there (or moved on) after all.
        const route = ctx.route as Route;
        const name = route.name ?? fault.match.name ?? "";
        body =
          route.verb === "create"
            ? alreadyExists(route.resource, name)
            : conflict(
                route.resource,
                name,
                fault.message ??
                  "the object has been modified; please apply your changes to the latest version and try again",
              );
        break;
      }
      case 504:
        body = failure(
          504,
          "Timeout",
          fault.message ??
            "the server was unable to return a response in the time allotted, but may still be processing the request",
        );
        break;
      default: {
        const message = fault.message ?? "injected fault";
        body = failure(fault.status, "InternalError", `Internal error occurred: ${message}`, {
          causes: [{ message }],
        });
      }
    }
    this.reply(ctx, fault.status, body, headers);
  }

  private hangUp(ctx: Context): void {
    this.recordRequest(ctx, 0);
    ctx.req.socket.destroy();
  }

  private recordRequest(ctx: Context, status: number): void {
    if (ctx.recorded) return;
    ctx.recorded = true;
    const route = ctx.route;
    this.requests.push({
      method: ctx.req.method ?? "",
      path: ctx.path,
      status,
      ...(route ? { verb: route.verb, resource: route.resource.plural } : {}),
      ...(route?.namespace === undefined ? {} : { namespace: route.namespace }),
      ...(route?.name === undefined ? {} : { name: route.name }),
      ...(ctx.user ? { user: ctx.user.username } : {}),
    });
  }

  private tokenKeyId(): string {
    const spki = this.tokenKey.export({ type: "pkcs8", format: "der" });
    return createHash("sha256").update(spki).digest("base64url").slice(0, 43);
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers

function parseRoute(method: string, url: URL): Route | { status: number; body: JsonObject } {
  const parts = url.pathname
    .split("/")
    .filter((p) => p !== "")
    .map(decodeURIComponent);
  let group: string;
  let version: string;
  let rest: string[];
  if (parts[0] === "api" && parts.length >= 2) {
    group = "";
    version = parts[1] ?? "";
    rest = parts.slice(2);
  } else if (parts[0] === "apis" && parts.length >= 3) {
    group = parts[1] ?? "";
    version = parts[2] ?? "";
    rest = parts.slice(3);
  } else {
    return { status: 404, body: pageNotFound() };
  }
  let namespace: string | undefined;
  let plural: string | undefined;
  let name: string | undefined;
  let subresource: string | undefined;
  if (rest[0] === "namespaces" && rest.length >= 3) {
    namespace = rest[1];
    plural = rest[2];
    name = rest[3];
    subresource = rest[4];
    if (rest.length > 5) return { status: 404, body: pageNotFound() };
  } else {
    plural = rest[0];
    name = rest[1];
    subresource = rest[2];
    if (rest.length > 3 || plural === undefined) return { status: 404, body: pageNotFound() };
  }
  const resource = RESOURCES.find((r) => r.group === group && r.version === version && r.plural === plural);
  if (resource === undefined || (namespace !== undefined && !resource.namespaced)) {
    return { status: 404, body: pageNotFound() };
  }
  if (subresource !== undefined && (subresource !== "status" || resource.statusSubresource !== true)) {
    return { status: 404, body: pageNotFound() };
  }
  const query = url.searchParams;
  let verb: Verb | undefined;
  switch (method) {
    case "GET":
      verb = name !== undefined ? "get" : ["1", "true"].includes(query.get("watch") ?? "") ? "watch" : "list";
      break;
    case "POST":
      verb = name === undefined ? "create" : undefined;
      break;
    case "PUT":
      verb = name === undefined ? undefined : "update";
      break;
    case "PATCH":
      verb = name === undefined ? undefined : "patch";
      break;
    case "DELETE":
      verb = name === undefined ? undefined : "delete";
      break;
  }
  const createOnly = !resource.stored;
  const wrongScope = resource.namespaced && namespace === undefined && verb !== "list" && verb !== "watch";
  const statusVerb = subresource === undefined || verb === "get" || verb === "update" || verb === "patch";
  if (verb === undefined || (createOnly && verb !== "create") || wrongScope || !statusVerb) {
    return {
      status: 405,
      body: failure(
        405,
        "MethodNotAllowed",
        `the server does not allow this method on the requested resource`,
        {},
      ),
    };
  }
  return {
    resource,
    verb,
    ...(namespace === undefined ? {} : { namespace }),
    ...(name === undefined ? {} : { name }),
    ...(subresource === "status" ? { subresource: "status" as const } : {}),
    query,
  };
}

function matchesRoute(
  match: FaultMatch,
  route: { verb: Verb; resource: ResourceDef; namespace?: string; name?: string },
): boolean {
  if (match.verb !== undefined) {
    const verbs: readonly Verb[] = typeof match.verb === "string" ? [match.verb] : match.verb;
    if (!verbs.includes(route.verb)) return false;
  }
  if (match.resource !== undefined && match.resource !== route.resource.plural) return false;
  if (match.namespace !== undefined && match.namespace !== route.namespace) return false;
  if (match.name !== undefined && match.name !== route.name) return false;
  return true;
}

function takeFault<F extends { remaining: number; match: FaultMatch }>(
  faults: F[],
  route: Route,
): F | undefined {
  const fault = faults.find((f) => f.remaining > 0 && matchesRoute(f.match, route));
  if (fault) fault.remaining--;
  return fault;
}

async function readBody(req: IncomingMessage): Promise<string | "too-large"> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return "too-large";
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** A request body as an object of `resource`'s kind, or the 400 Status explaining why not. */
function parseObject(body: string, resource: ResourceDef): { object: JsonObject } | { rejected: JsonObject } {
  let value: Json;
  try {
    value = JSON.parse(body) as Json;
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    return { rejected: badRequest(`couldn't get version/kind; json parse error: ${why}`) };
  }
  if (!isObject(value)) {
    return { rejected: badRequest("the object provided is unrecognized (must be a JSON object)") };
  }
  if (value.kind !== undefined && value.kind !== resource.kind) {
    return {
      rejected: badRequest(
        `${String(value.kind)} in version "${resource.version}" cannot be handled as a ${resource.kind}: the kind in the body does not match the URL`,
      ),
    };
  }
  if (value.apiVersion !== undefined && value.apiVersion !== apiVersionOf(resource)) {
    return {
      rejected: badRequest(
        `the API version in the data (${String(value.apiVersion)}) does not match the expected API version (${apiVersionOf(resource)})`,
      ),
    };
  }
  return { object: value };
}

function nameProblem(resource: ResourceDef, name: string): FieldError | undefined {
  if (resource === SERVICES && !(DNS_1035_LABEL.test(name) && name.length <= 63)) {
    return {
      reason: "FieldValueInvalid",
      field: "metadata.name",
      message: `Invalid value: "${name}": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')`,
    };
  }
  const label = resource === NAMESPACES;
  const ok = label
    ? DNS_LABEL.test(name) && name.length <= 63
    : DNS_SUBDOMAIN.test(name) && name.length <= 253;
  if (ok) return undefined;
  return {
    reason: "FieldValueInvalid",
    field: "metadata.name",
    message: label
      ? `Invalid value: "${name}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`
      : `Invalid value: "${name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`,
  };
}

/** RFC 7386. */
function mergePatch(target: Json, patch: Json): Json {
  if (!isObject(patch)) return clone(patch);
  const result: JsonObject = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key] ?? null, value);
  }
  return result;
}

function withTypeMeta(resource: ResourceDef, object: JsonObject): JsonObject {
  const { kind: _kind, apiVersion: _apiVersion, ...rest } = object;
  return { kind: resource.kind, apiVersion: apiVersionOf(resource), ...rest };
}

/** Items of a typed list carry no kind or apiVersion of their own. */
function stripTypeMeta(object: JsonObject): JsonObject {
  const { kind: _kind, apiVersion: _apiVersion, ...rest } = object;
  return rest;
}

function encodeContinue(token: { rv: number; start: number; id: string }): string {
  return Buffer.from(
    JSON.stringify({ v: "meta.k8s.io/v1", rv: token.rv, start: token.start, id: token.id }),
  ).toString("base64url");
}

function decodeContinue(text: string): { rv: number; start: number; id: string } | undefined {
  try {
    const value = JSON.parse(Buffer.from(text, "base64url").toString("utf8")) as {
      rv?: unknown;
      start?: unknown;
      id?: unknown;
    };
    if (typeof value.rv === "number" && typeof value.start === "number" && typeof value.id === "string") {
      return { rv: value.rv, start: value.start, id: value.id };
    }
  } catch {
    // fall through
  }
  return undefined;
}

function storeKey(resource: ResourceDef, namespace: string, name: string): string {
  return `${resource.group}/${resource.plural}/${namespace}/${name}`;
}

function compareKeys(a: Stored, b: Stored): number {
  const an = `${a.namespace}/${String((a.object.metadata as JsonObject).name)}`;
  const bn = `${b.namespace}/${String((b.object.metadata as JsonObject).name)}`;
  return an < bn ? -1 : an > bn ? 1 : 0;
}

function resourceByPlural(plural: string): ResourceDef {
  const def = RESOURCES.find((r) => r.plural === plural && r.stored);
  if (def === undefined) throw new Error(`the fake serves no stored resource "${plural}"`);
  return def;
}

function withAuthenticated(groups: readonly string[] | undefined): string[] {
  const list = [...(groups ?? [])];
  if (!list.includes("system:authenticated")) list.push("system:authenticated");
  return list;
}

/** Stored objects always carry their own kind, so a Status here can only be a refusal. */
function isFailure(result: JsonObject): boolean {
  return result.kind === "Status";
}

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function clone<T extends Json>(value: T): T {
  return structuredClone(value);
}

function toJson(value: Readonly<Record<string, readonly string[]>>): JsonObject {
  const out: JsonObject = {};
  for (const [key, list] of Object.entries(value)) out[key] = [...list];
  return out;
}

/** Key-order independent, so a no-op update is recognised whatever order the client wrote. */
function canonical(value: Json): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (isObject(value)) {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(value[k] ?? null)}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

function uuidFrom(seed: string): string {
  const hex = createHash("sha256").update(seed).digest("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

// ---------------------------------------------------------------------------------------------
// The cluster CA and the certificates it signs, made with the project's own X.509 code

interface TestCa {
  readonly key: KeyObject;
  readonly der: Buffer;
  readonly pem: string;
}

async function makeCa(): Promise<TestCa> {
  const { privateKey, publicKey } = await generateKeyPair("ecdsa-p256");
  const spki = publicKey.export({ type: "spki", format: "der" });
  const name = encodeName({ commonName: "kubernetes" });
  const now = Date.now();
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: name,
      subject: name,
      spki,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 86_400_000),
      extensions: [
        ext.basicConstraints(true),
        ext.keyUsage(["keyCertSign", "cRLSign", "digitalSignature"]),
        ext.subjectKeyIdentifier(keyIdentifier(spki)),
      ],
    },
    signerFor(privateKey),
  );
  return { key: privateKey, der, pem: encodePem("CERTIFICATE", der) };
}

async function issueCert(
  ca: TestCa,
  commonName: string,
  organization: string | undefined,
  usage: "serverAuth" | "clientAuth",
  names: { dns: string[]; ips: string[] } | undefined,
): Promise<{ certPem: string; keyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPair("ecdsa-p256");
  const spki = publicKey.export({ type: "spki", format: "der" });
  const now = Date.now();
  const caSpki = new X509Certificate(ca.der).publicKey.export({ type: "spki", format: "der" });
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: certificateSubjectDer(ca.der),
      subject: encodeName({ commonName, ...(organization ? { organization } : {}) }),
      spki,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 86_400_000),
      extensions: [
        ext.basicConstraints(false),
        ext.keyUsage(["digitalSignature", "keyEncipherment"]),
        ext.extKeyUsage([usage]),
        ext.subjectKeyIdentifier(keyIdentifier(spki)),
        ext.authorityKeyIdentifier(keyIdentifier(caSpki)),
        ...(names ? [ext.subjectAltName(names)] : []),
      ],
    },
    signerFor(ca.key),
  );
  return { certPem: encodePem("CERTIFICATE", der), keyPem: privateKeyToPem(privateKey) };
}
