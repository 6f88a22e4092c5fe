// SDS resource names → encoded Secret resources (DESIGN.md §5).
//
// Envoy asks by name; the agent serves exactly two things under several names: its own workload
// certificate with key, and the mesh trust bundle. Each distinct Secret is encoded once per change of
// what it carries and then shared by every stream that asks for it, so a rotation fanned out to a
// thousand streams costs one encoding per name, not one per stream.

import { createHash } from "node:crypto";
import type { ServiceIdentity } from "../../common/identity.js";
import { type AnyMessage, encodeSecret, SECRET_TYPE_URL, type Secret } from "../../proto/envoy-sds.js";
import type { SecretSnapshot, WorkloadCertificate } from "../secret-cache.js";

export const DEFAULT_CERT_NAME = "default";
export const ROOT_CA_NAME = "ROOTCA";
const SERVICE_CERT_PREFIX = "service-cert:";
const ROOT_CERT_PREFIXES = ["root-cert-for-mtls-inbound:", "root-cert-for-mtls-outbound:"] as const;

export type SecretKind = "certificate" | "trust-bundle";

export type NameClassification =
  | { readonly kind: SecretKind }
  | { readonly kind: "unknown"; readonly reason: string };

const SERVED_NAMES = `this agent serves "${DEFAULT_CERT_NAME}", "${ROOT_CA_NAME}", "service-cert:<namespace>/<service-account>" (its own identity only), "root-cert-for-mtls-inbound:…" and "root-cert-for-mtls-outbound:…"`;

/** What a resource name refers to for an agent holding `identity`'s certificate. */
export function classifySecretName(name: string, identity: ServiceIdentity): NameClassification {
  if (name === DEFAULT_CERT_NAME) return { kind: "certificate" };
  if (name === ROOT_CA_NAME) return { kind: "trust-bundle" };
  for (const prefix of ROOT_CERT_PREFIXES) if (name.startsWith(prefix)) return { kind: "trust-bundle" };
  if (name.startsWith(SERVICE_CERT_PREFIX)) {
    const [namespace, serviceAccount, ...rest] = name.slice(SERVICE_CERT_PREFIX.length).split("/");
    if (rest.length === 0 && namespace === identity.namespace && serviceAccount === identity.serviceAccount) {
      return { kind: "certificate" };
    }
    // The key is this pod's; serving it under another identity's name would be a lie to Envoy.
    return {
      kind: "unknown",
      reason: `"${name}" does not name this pod's identity (service-cert:${identity.namespace}/${identity.serviceAccount})`,
    };
  }
  return { kind: "unknown", reason: `unknown secret name "${name}": ${SERVED_NAMES}` };
}

/** One Secret ready to put on the wire. `version` changes exactly when the Secret's content does. */
export interface ResolvedSecret {
  readonly name: string;
  readonly version: string;
  readonly resource: AnyMessage;
}

export type SecretResolution =
  | { readonly status: "ready"; readonly secret: ResolvedSecret }
  /** Known, but nothing servable yet: no valid certificate (or no trust bundle) right now. */
  | { readonly status: "pending" }
  | { readonly status: "unknown"; readonly reason: string };

/** The part of SecretCache this module reads. */
export interface SecretSource {
  snapshot(): SecretSnapshot;
  validCertificate(now?: number): WorkloadCertificate | null;
}

interface Encoded {
  /** What the Secret was built from; a different object (or string) means rebuild. */
  readonly from: WorkloadCertificate | string;
  readonly secret: ResolvedSecret;
}

const PENDING: SecretResolution = { status: "pending" };
/**
 * Encoded Secrets kept at once. OSM's names carry free-form suffixes, so clients choose how many
 * distinct names exist; the least recently used encoding is dropped past this and rebuilt on demand.
 */
export const MAX_ENCODED_NAMES = 128;

export class SecretResources {
  private readonly source: SecretSource;
  private readonly identity: ServiceIdentity;
  private readonly encoded = new Map<string, Encoded>();

  constructor(options: { source: SecretSource; identity: ServiceIdentity }) {
    this.source = options.source;
    this.identity = options.identity;
  }

  classify(name: string): NameClassification {
    return classifySecretName(name, this.identity);
  }

  resolve(name: string): SecretResolution {
    const classification = this.classify(name);
    switch (classification.kind) {
      case "unknown":
        return { status: "unknown", reason: classification.reason };
      case "certificate": {
        // Only a certificate valid right now: an expired one is never handed to Envoy (DESIGN.md §6).
        const cert = this.source.validCertificate();
        if (cert === null) return PENDING;
        return { status: "ready", secret: this.encode(name, cert, certificateSecret) };
      }
      case "trust-bundle": {
        const bundle = this.source.snapshot().trustBundlePem;
        if (bundle === null || bundle === "") return PENDING;
        return { status: "ready", secret: this.encode(name, bundle, trustBundleSecret) };
      }
    }
  }

  /** Encodings held now (bounded by MAX_ENCODED_NAMES). */
  get encodedCount(): number {
    return this.encoded.size;
  }

  /** Drops encodings of superseded content, so names nobody asks for any more do not pin old keys. */
  prune(): void {
    const cert = this.source.snapshot().certificate;
    const bundle = this.source.snapshot().trustBundlePem;
    for (const [name, entry] of this.encoded) {
      if (entry.from !== cert && entry.from !== bundle) this.encoded.delete(name);
    }
  }

  private encode<T extends WorkloadCertificate | string>(
    name: string,
    from: T,
    build: (name: string, from: T) => { secret: Secret; publicPart: string },
  ): ResolvedSecret {
    const cached = this.encoded.get(name);
    if (cached !== undefined && cached.from === from) {
      // Map order is the eviction order: a hit moves the name to the young end.
      this.encoded.delete(name);
      this.encoded.set(name, cached);
      return cached.secret;
    }
    const { secret, publicPart } = build(name, from);
    const resolved: ResolvedSecret = {
      name,
      // A content hash rather than a counter: it survives agent restarts, so Envoy's
      // initial_resource_versions on a Delta reconnect are compared against what it really holds.
      // Only public material is hashed; the certificate pins its key anyway.
      version: createHash("sha256").update(publicPart).digest("hex").slice(0, 16),
      resource: { type_url: SECRET_TYPE_URL, value: encodeSecret(secret) },
    };
    this.encoded.delete(name);
    if (this.encoded.size >= MAX_ENCODED_NAMES)
      this.encoded.delete(this.encoded.keys().next().value as string);
    this.encoded.set(name, { from, secret: resolved });
    return resolved;
  }
}

function certificateSecret(name: string, cert: WorkloadCertificate): { secret: Secret; publicPart: string } {
  return {
    secret: {
      name,
      tls_certificate: {
        certificate_chain: { inline_bytes: Buffer.from(cert.certChainPem, "utf8") },
        private_key: { inline_bytes: Buffer.from(cert.privateKeyPem, "utf8") },
      },
    },
    publicPart: cert.certChainPem,
  };
}

function trustBundleSecret(name: string, bundlePem: string): { secret: Secret; publicPart: string } {
  return {
    secret: { name, validation_context: { trusted_ca: { inline_bytes: Buffer.from(bundlePem, "utf8") } } },
    publicPart: bundlePem,
  };
}
