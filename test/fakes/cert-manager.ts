// cert-manager in the fake API server (DESIGN.md §10), written from cert-manager's public API
// reference (cert-manager.io/v1): the CertificateRequest, Issuer and ClusterIssuer kinds with the
// validation its webhook and CRD schemas apply, and a signer that behaves like cert-manager's
// approver plus its CA issuer — it approves and signs, denies, fails, marks a request invalid, or
// stalls, per request (by the CSR's common name) or for all, after a configurable latency. Every
// status change goes through the status subresource, so watchers see each step.
//
// Only type imports from kube-apiserver.ts: it loads this module while defining its kinds.

import { createPrivateKey, X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { parseDuration } from "../../common/duration.js";
import { generateKeyPair } from "../../common/keys.js";
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
import { parseCsrPem } from "../../common/x509/csr.js";
import type { ChangeEvent, FieldError, Json, JsonObject, ResourceDef } from "./kube-apiserver.js";

export const CERT_MANAGER_GROUP = "cert-manager.io";

/** cert-manager.io/v1 KeyUsage values (pkg/apis/certmanager/v1/types.go). */
const KEY_USAGES = [
  "signing",
  "digital signature",
  "content commitment",
  "key encipherment",
  "key agreement",
  "data encipherment",
  "cert sign",
  "crl sign",
  "encipher only",
  "decipher only",
  "any",
  "server auth",
  "client auth",
  "code signing",
  "email protection",
  "s/mime",
  "ipsec end system",
  "ipsec tunnel",
  "ipsec user",
  "timestamping",
  "ocsp signing",
  "microsoft sgc",
  "netscape sgc",
];
const ISSUER_TYPES = ["acme", "ca", "vault", "selfSigned", "venafi"];
/** cert-manager's default when spec.duration is unset (90 days). */
const DEFAULT_DURATION_MS = 2160 * 3_600_000;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const isObject = (value: Json | undefined): value is JsonObject =>
  typeof value === "object" && value !== null && !Array.isArray(value);
const required = (path: string): FieldError => ({
  reason: "FieldValueRequired",
  field: path,
  message: "Required value: must be specified",
});
const invalidValue = (path: string, value: Json | undefined, why: string): FieldError => ({
  reason: "FieldValueInvalid",
  field: path,
  message: `Invalid value: ${JSON.stringify(value ?? null)}: ${why}`,
});

// The validator and the signer read the same CSR; parsing it once keeps a storm of requests from
// costing the fake (on the same cores as the processes under test) twice the work.
const parsedCsrs = new Map<string, ReturnType<typeof parseCsrPem>>();
function parseRequest(request: string): ReturnType<typeof parseCsrPem> {
  let parsed = parsedCsrs.get(request);
  if (parsed === undefined) {
    parsed = parseCsrPem(Buffer.from(request, "base64").toString("utf8"));
    if (parsedCsrs.size >= 1_000) parsedCsrs.delete(parsedCsrs.keys().next().value as string);
    parsedCsrs.set(request, parsed);
  }
  return parsed;
}

function certificateRequestErrors(object: JsonObject, previous: JsonObject | undefined): FieldError[] {
  const spec = object.spec;
  if (!isObject(spec)) return [required("spec")];
  if (previous !== undefined) {
    // All of spec is immutable after creation (the webhook's update check).
    if (JSON.stringify(spec) !== JSON.stringify(previous.spec)) {
      return [{ reason: "FieldValueForbidden", field: "spec", message: "Forbidden: field is immutable" }];
    }
    return [];
  }
  const errors: FieldError[] = [];
  const request = spec.request;
  if (request === undefined || request === "") errors.push(required("spec.request"));
  else if (typeof request !== "string" || !BASE64.test(request)) {
    // CRD schema: format byte.
    errors.push(invalidValue("spec.request", request, "spec.request in body must be of type byte"));
  } else {
    try {
      parseRequest(request);
    } catch (error) {
      errors.push(invalidValue("spec.request", "<csr>", `failed to decode csr: ${(error as Error).message}`));
    }
  }
  const ref = spec.issuerRef;
  if (!isObject(ref) || typeof ref.name !== "string" || ref.name === "") {
    errors.push(required("spec.issuerRef.name"));
  } else if (ref.kind !== undefined && ref.kind !== "Issuer" && ref.kind !== "ClusterIssuer") {
    // Only for cert-manager's own group; external issuers choose their kinds.
    if ((ref.group ?? CERT_MANAGER_GROUP) === CERT_MANAGER_GROUP)
      errors.push(invalidValue("spec.issuerRef.kind", ref.kind, "must be one of Issuer or ClusterIssuer"));
  }
  if (spec.usages !== undefined) {
    if (!Array.isArray(spec.usages)) errors.push(invalidValue("spec.usages", spec.usages, "must be a list"));
    else
      spec.usages.forEach((usage, i) => {
        if (typeof usage !== "string" || !KEY_USAGES.includes(usage))
          errors.push(invalidValue(`spec.usages[${i}]`, usage, "unknown keyusage"));
      });
  }
  if (spec.duration !== undefined) {
    try {
      if (typeof spec.duration !== "string") throw new Error("not a string");
      parseDuration(spec.duration);
    } catch {
      errors.push(invalidValue("spec.duration", spec.duration, "must be a duration"));
    }
  }
  if (spec.isCA !== undefined && typeof spec.isCA !== "boolean") {
    errors.push(invalidValue("spec.isCA", spec.isCA, "spec.isCA in body must be of type boolean"));
  }
  return errors;
}

function issuerErrors(object: JsonObject): FieldError[] {
  const spec = object.spec;
  if (!isObject(spec)) return [required("spec")];
  const types = ISSUER_TYPES.filter((t) => spec[t] !== undefined);
  if (types.length === 0)
    return [
      {
        reason: "FieldValueRequired",
        field: "spec",
        message: "Required value: at least one issuer type must be specified",
      },
    ];
  if (types.length > 1)
    return [
      {
        reason: "FieldValueForbidden",
        field: "spec",
        message: "Forbidden: may not specify more than one issuer type",
      },
    ];
  if (types[0] === "ca") {
    const ca = spec.ca;
    if (!isObject(ca) || typeof ca.secretName !== "string" || ca.secretName === "")
      return [required("spec.ca.secretName")];
  }
  if (types[0] === "acme") {
    const acme = spec.acme;
    if (!isObject(acme) || typeof acme.server !== "string" || acme.server === "")
      return [required("spec.acme.server")];
  }
  return [];
}

const FIELDS = ["metadata.name", "metadata.namespace"];

export const CERTIFICATE_REQUESTS: ResourceDef = {
  group: CERT_MANAGER_GROUP,
  version: "v1",
  plural: "certificaterequests",
  kind: "CertificateRequest",
  namespaced: true,
  stored: true,
  fieldSelectors: FIELDS,
  statusSubresource: true,
  prepare: certificateRequestErrors,
};
export const ISSUERS: ResourceDef = {
  group: CERT_MANAGER_GROUP,
  version: "v1",
  plural: "issuers",
  kind: "Issuer",
  namespaced: true,
  stored: true,
  fieldSelectors: FIELDS,
  statusSubresource: true,
  prepare: (object) => issuerErrors(object),
};
export const CLUSTER_ISSUERS: ResourceDef = {
  group: CERT_MANAGER_GROUP,
  version: "v1",
  plural: "clusterissuers",
  kind: "ClusterIssuer",
  namespaced: false,
  stored: true,
  fieldSelectors: ["metadata.name"],
  statusSubresource: true,
  prepare: (object) => issuerErrors(object),
};
export const CERT_MANAGER_RESOURCES: readonly ResourceDef[] = [
  CERTIFICATE_REQUESTS,
  ISSUERS,
  CLUSTER_ISSUERS,
];

// ---------------------------------------------------------------------------------------------
// The signer: approver + CA issuer

export type SignerMode = "approve" | "deny" | "fail" | "invalid" | "stall";

export interface SignerBehaviour {
  readonly mode: SignerMode;
  /** Before each status step (approval, then the outcome). */
  readonly latencyMs?: number;
  /** Condition reason and message for deny / fail / invalid. */
  readonly reason?: string;
  readonly message?: string;
  /** Some issuers put the root at the end of status.certificate; clients must cope. */
  readonly includeRootInChain?: boolean;
}

/** How the signer reaches the fake's store (no HTTP, as a controller inside the cluster). */
export interface SignerStore {
  object(plural: string, namespace: string | undefined, name: string): JsonObject | undefined;
  writeStatus(plural: string, namespace: string | undefined, name: string, status: Json): JsonObject;
}

export interface SignerStats {
  readonly created: number;
  readonly deleted: number;
  /** CertificateRequests existing now, and the most that ever existed at once. */
  readonly live: number;
  readonly maxLive: number;
}

interface SigningCa {
  readonly key: import("node:crypto").KeyObject;
  /** The CA's SubjectPublicKeyInfo (for authorityKeyIdentifier). */
  readonly spki: Buffer;
  readonly der: Buffer;
  readonly pem: string;
  readonly notAfter: number;
}

const conditionTime = (): string => new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
const condition = (type: string, status: "True" | "False", reason: string, message: string): JsonObject => ({
  type,
  status,
  lastTransitionTime: conditionTime(),
  reason,
  message,
});

export class CertManagerSigner {
  private ca: SigningCa | null = null;
  private caReady: Promise<SigningCa> | null = null;
  private fallback: SignerBehaviour = { mode: "approve" };
  private readonly byCommonName = new Map<string, SignerBehaviour>();
  private readonly keyPairs = new Map<string, SigningCa>();
  private created = 0;
  private deleted = 0;
  private live = 0;
  private maxLive = 0;

  constructor(private readonly store: SignerStore) {}

  /** The CA this "CA issuer" signs with: what the operator puts in the osm-ca-bundle Secret. */
  async caPem(): Promise<string> {
    return (await this.signingCa()).pem;
  }

  /** For every request, or (with commonName) only for CSRs with that subject CN. */
  behave(behaviour: SignerBehaviour, commonName?: string): void {
    if (commonName === undefined) this.fallback = behaviour;
    else this.byCommonName.set(commonName, behaviour);
  }

  reset(): void {
    this.fallback = { mode: "approve" };
    this.byCommonName.clear();
    this.maxLive = this.live;
  }

  stats(): SignerStats {
    return { created: this.created, deleted: this.deleted, live: this.live, maxLive: this.maxLive };
  }

  /** Called by the fake for every stored change. */
  observe(event: ChangeEvent): void {
    if (event.resource === CERTIFICATE_REQUESTS) {
      if (event.type === "ADDED") {
        this.created++;
        this.live++;
        this.maxLive = Math.max(this.maxLive, this.live);
        void this.process(event.namespace, nameOf(event.object)).catch(() => {});
      } else if (event.type === "DELETED") {
        this.deleted++;
        this.live--;
      }
    } else if ((event.resource === ISSUERS || event.resource === CLUSTER_ISSUERS) && event.type === "ADDED") {
      // cert-manager's issuer controller: a CA or ACME issuer becomes Ready once set up.
      const spec = isObject(event.object.spec) ? event.object.spec : {};
      const ready =
        spec.acme !== undefined
          ? condition(
              "Ready",
              "True",
              "ACMEAccountRegistered",
              "The ACME account was registered with the ACME server",
            )
          : condition("Ready", "True", "KeyPairVerified", "Signing CA verified");
      const plural = event.resource.plural;
      setImmediate(() =>
        this.store.writeStatus(plural, event.namespace || undefined, nameOf(event.object), {
          conditions: [ready],
        }),
      );
    }
  }

  private issuerKeyPair(issuer: JsonObject, namespace: string | undefined): SigningCa | null {
    const spec = isObject(issuer.spec) ? issuer.spec : {};
    const secretName = isObject(spec.ca) ? spec.ca.secretName : undefined;
    // A ClusterIssuer reads its Secret from cert-manager's cluster resource namespace (not served here).
    if (typeof secretName !== "string" || namespace === undefined) return null;
    const secret = this.store.object("secrets", namespace, secretName);
    if (secret === undefined) return null;
    const data = isObject(secret.data) ? secret.data : {};
    const version = String((secret.metadata as JsonObject).resourceVersion);
    const key = `${namespace}/${secretName}@${version}`;
    const cached = this.keyPairs.get(key);
    if (cached !== undefined) return cached;
    if (typeof data["tls.crt"] !== "string" || typeof data["tls.key"] !== "string") {
      throw new Error(`secret "${secretName}" has no tls.crt or tls.key`);
    }
    const cert = new X509Certificate(Buffer.from(data["tls.crt"], "base64"));
    const pair: SigningCa = {
      key: createPrivateKey(Buffer.from(data["tls.key"], "base64")),
      der: cert.raw,
      spki: cert.publicKey.export({ type: "spki", format: "der" }),
      pem: cert.toString(),
      notAfter: Date.parse(cert.validTo),
    };
    this.keyPairs.set(key, pair);
    return pair;
  }

  private async signingCa(): Promise<SigningCa> {
    if (this.ca !== null) return this.ca;
    this.caReady ??= makeSigningCa().then((ca) => {
      this.ca = ca;
      return ca;
    });
    return this.caReady;
  }

  private async process(namespace: string, name: string): Promise<void> {
    const read = () => this.store.object("certificaterequests", namespace, name);
    const first = read();
    if (first === undefined) return;
    const spec = first.spec as JsonObject;
    const csr = parseRequest(String(spec.request));
    const behaviour = this.byCommonName.get(csr.subjectCommonName ?? "") ?? this.fallback;
    const pause = () => new Promise((resolve) => setTimeout(resolve, behaviour.latencyMs ?? 0));
    const write = (conditions: JsonObject[], extra: JsonObject = {}) => {
      const current = read();
      if (current === undefined) return false; // deleted meanwhile: nothing to do
      const status = isObject(current.status) ? current.status : {};
      const kept = (Array.isArray(status.conditions) ? status.conditions : []).filter(
        (c) => isObject(c) && !conditions.some((n) => n.type === c.type),
      );
      this.store.writeStatus("certificaterequests", namespace, name, {
        ...status,
        conditions: [...kept, ...conditions],
        ...extra,
      });
      return true;
    };
    if (behaviour.mode === "stall") return;
    await pause();
    if (behaviour.mode === "deny") {
      const denied = condition(
        "Denied",
        "True",
        behaviour.reason ?? "policy.cert-manager.io",
        behaviour.message ?? "No policy approved this request",
      );
      if (!write([denied])) return;
      await pause();
      write(
        [
          condition(
            "Ready",
            "False",
            "Denied",
            "The CertificateRequest was denied by an approval controller",
          ),
        ],
        {
          failureTime: conditionTime(),
        },
      );
      return;
    }
    if (
      !write([
        condition(
          "Approved",
          "True",
          "cert-manager.io",
          "Certificate request has been approved by cert-manager.io",
        ),
      ])
    )
      return;
    await pause();
    if (behaviour.mode === "fail") {
      write(
        [
          condition(
            "Ready",
            "False",
            "Failed",
            behaviour.message ?? "Error signing certificate: the CA refused",
          ),
        ],
        { failureTime: conditionTime() },
      );
      return;
    }
    if (behaviour.mode === "invalid") {
      const message =
        behaviour.message ?? "The CSR PEM requests a commonName that is not present in the list of dnsNames";
      write(
        [
          condition("InvalidRequest", "True", behaviour.reason ?? "RequestValidationFailed", message),
          condition("Ready", "False", "Failed", message),
        ],
        { failureTime: conditionTime() },
      );
      return;
    }
    // The CA issuer: the referenced issuer must exist (and, for Issuer, live in the request's namespace).
    const ref = spec.issuerRef as JsonObject;
    const kind = (ref.kind as string | undefined) ?? "Issuer";
    const issuer =
      kind === "ClusterIssuer"
        ? this.store.object("clusterissuers", undefined, String(ref.name))
        : this.store.object("issuers", namespace, String(ref.name));
    if (issuer === undefined) {
      write([
        condition(
          "Ready",
          "False",
          "Pending",
          `Referenced "${kind}" not found: ${kind.toLowerCase()}.cert-manager.io "${String(ref.name)}" not found`,
        ),
      ]);
      return;
    }
    // A CA issuer signs with the key pair in its spec.ca.secretName Secret (tls.crt, tls.key) when
    // that Secret exists, as cert-manager does; otherwise with the fake's own CA (caPem()).
    let ca: SigningCa;
    try {
      ca =
        this.issuerKeyPair(issuer, kind === "ClusterIssuer" ? undefined : namespace) ??
        (await this.signingCa());
    } catch (error) {
      write(
        [
          condition(
            "Ready",
            "False",
            "Failed",
            `Error getting keypair for CA issuer: ${(error as Error).message}`,
          ),
        ],
        { failureTime: conditionTime() },
      );
      return;
    }
    const durationMs = typeof spec.duration === "string" ? parseDuration(spec.duration) : DEFAULT_DURATION_MS;
    const usages = Array.isArray(spec.usages)
      ? (spec.usages as string[])
      : ["digital signature", "key encipherment"];
    const leaf = signLeaf(ca, csr, durationMs, usages);
    const chain = behaviour.includeRootInChain === true ? leaf + ca.pem : leaf;
    write([condition("Ready", "True", "Issued", "Certificate fetched from issuer successfully")], {
      certificate: Buffer.from(chain).toString("base64"),
      ca: Buffer.from(ca.pem).toString("base64"),
    });
  }
}

function nameOf(object: JsonObject): string {
  return String((object.metadata as JsonObject).name);
}

async function makeSigningCa(): Promise<SigningCa> {
  const { privateKey, publicKey } = await generateKeyPair("ecdsa-p256");
  const spki = publicKey.export({ type: "spki", format: "der" });
  const name = encodeName({ commonName: "cert-manager fake CA" });
  const now = Date.now();
  const notAfter = now + 10 * 365 * 86_400_000;
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: name,
      subject: name,
      spki,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(notAfter),
      extensions: [
        ext.basicConstraints(true),
        ext.keyUsage(["keyCertSign", "cRLSign", "digitalSignature"]),
        ext.subjectKeyIdentifier(keyIdentifier(spki)),
      ],
    },
    signerFor(privateKey),
  );
  return { key: privateKey, spki, der, pem: encodePem("CERTIFICATE", der), notAfter };
}

/** As cert-manager's CA issuer: subject and SANs from the CSR, usages and duration from the spec. */
function signLeaf(
  ca: SigningCa,
  csr: ReturnType<typeof parseCsrPem>,
  durationMs: number,
  usages: readonly string[],
): string {
  const now = Date.now();
  const keyUsage = [
    ...(usages.includes("digital signature") ? (["digitalSignature"] as const) : []),
    ...(usages.includes("key encipherment") ? (["keyEncipherment"] as const) : []),
  ];
  const extKeyUsage = [
    ...(usages.includes("server auth") ? (["serverAuth"] as const) : []),
    ...(usages.includes("client auth") ? (["clientAuth"] as const) : []),
  ];
  const caSpki = ca.spki;
  const names = {
    dns: [...csr.dnsNames],
    uris: [...csr.uris],
    ips: csr.ipAddresses.filter((ip) => isIP(ip) !== 0),
  };
  const der = buildCertificate(
    {
      serialNumber: randomSerialNumber(),
      issuer: certificateSubjectDer(ca.der),
      subject: encodeName({ commonName: csr.subjectCommonName ?? "" }),
      spki: csr.publicKey.spki,
      notBefore: new Date(now),
      notAfter: new Date(Math.min(now + durationMs, ca.notAfter)),
      extensions: [
        ext.basicConstraints(false),
        ...(keyUsage.length > 0 ? [ext.keyUsage(keyUsage)] : []),
        ...(extKeyUsage.length > 0 ? [ext.extKeyUsage(extKeyUsage)] : []),
        ext.subjectKeyIdentifier(keyIdentifier(csr.publicKey.spki)),
        ext.authorityKeyIdentifier(keyIdentifier(caSpki)),
        ...(names.dns.length + names.uris.length + names.ips.length > 0 ? [ext.subjectAltName(names)] : []),
      ],
    },
    signerFor(ca.key),
  );
  return encodePem("CERTIFICATE", der);
}
