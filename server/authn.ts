// Who is calling. A client certificate counts only when TLS verified it against the mesh roots
// (grpc-js reports a peer certificate only then), it is still valid now (a long-lived connection can
// outlive the certificate it was opened with), and it is meant for client authentication. The
// identity comes from its SPIFFE ID (a service cert, on renewal) or its CN (an xDS bootstrap cert).
// A bearer token in the call's metadata is checked instead, with a TokenReview (token-review.ts).

import { parseBootstrapCommonName, parseSpiffeId, type ServiceIdentity } from "../common/identity.js";
import { type CertificateNames, readCertificateNames } from "../common/x509/certificate-names.js";
import { tlsConnectionOf } from "./peer-connection.js";
import type { TokenAuthenticator } from "./token-review.js";

export type Caller = {
  readonly identity: ServiceIdentity;
  readonly method: "service-cert" | "bootstrap-cert" | "service-account-token";
  readonly podUid?: string | undefined;
  readonly podName?: string | undefined;
  /** Expiry of the credential; cached authentications never outlive it. */
  readonly credentialNotAfter: number;
};

export type AuthnResult =
  | { readonly ok: true; readonly caller: Caller }
  | { readonly ok: false; readonly message: string };

/**
 * What authentication reads of a verified peer certificate: node:tls's PeerCertificate, which is
 * what getPeerCertificate() and grpc-js's getAuthContext() return.
 */
export interface PeerCertificateFields {
  readonly raw: Buffer;
  readonly fingerprint256: string;
  readonly valid_to: string;
  readonly ca: boolean;
  readonly ext_key_usage?: string[] | undefined;
}

/** The one thing authentication needs from a gRPC call (ServerUnaryCall and streams have it). */
export interface PeerCertificateSource {
  getAuthContext(): { sslPeerCertificate?: PeerCertificateFields | undefined };
}

const CLIENT_AUTH_OID = "1.3.6.1.5.5.7.3.2";
const CACHE_LIMIT = 10_000;

type Classified = AuthnResult & { notAfter: number };

const NO_CERTIFICATE: Classified = {
  ok: false,
  message:
    "no valid client certificate: present an xDS bootstrap certificate or your current service certificate " +
    "issued by the mesh CA (certificates from another CA, expired ones and none at all are refused)",
  notAfter: Number.POSITIVE_INFINITY,
};

export class ClientCertificateAuthenticator {
  // Once per connection: what TLS verified at the handshake cannot change while the HTTP/2 session
  // lives (peer-connection.ts), so the certificate is read and classified on the connection's first
  // call and the verdict kept with the session; only its expiry is checked on every call.
  private readonly byConnection = new WeakMap<object, Classified>();
  // When the connection cannot be found (peer-connection.ts falls back): parsing a certificate costs
  // more than the rest of authentication, so verdicts are kept by the SHA-256 fingerprint TLS computed.
  private readonly cache = new Map<string, Classified>();

  constructor(private readonly trustDomain: string) {}

  authenticate(call: PeerCertificateSource, now = Date.now()): AuthnResult {
    const result = this.classified(call);
    if (result.ok && now >= result.notAfter) {
      return {
        ok: false,
        message: `client certificate expired at ${new Date(result.notAfter).toISOString()}`,
      };
    }
    return result;
  }

  private classified(call: PeerCertificateSource): Classified {
    const connection = tlsConnectionOf(call);
    if (connection !== undefined) {
      let result = this.byConnection.get(connection.session);
      if (result === undefined) {
        const { socket } = connection;
        // `authorized`: a certificate was presented and chains to the mesh roots (grpc-js's rule too).
        // getPeerCertificate(), not getPeerX509Certificate(): the latter copies the certificate
        // (X509_dup re-decodes it, and its key, through OpenSSL 3.0's slow decoder), ≈ 3× the cost
        // on every first contact; this one reads the handshake's own decoded copy.
        const cert = socket.authorized ? socket.getPeerCertificate() : undefined;
        result = cert?.raw === undefined ? NO_CERTIFICATE : this.classify(cert);
        this.byConnection.set(connection.session, result);
      }
      return result;
    }
    const peer = call.getAuthContext().sslPeerCertificate;
    if (peer === undefined) return NO_CERTIFICATE;
    let result = this.cache.get(peer.fingerprint256);
    if (result === undefined) {
      result = this.classify(peer);
      if (this.cache.size >= CACHE_LIMIT) this.cache.delete(this.cache.keys().next().value as string);
      this.cache.set(peer.fingerprint256, result);
    }
    return result;
  }

  private classify(cert: PeerCertificateFields): AuthnResult & { notAfter: number } {
    const notAfter = Date.parse(cert.valid_to);
    const refuse = (message: string) => ({ ok: false as const, message, notAfter });
    if (cert.ca) return refuse("a CA certificate cannot authenticate a workload");
    const eku = cert.ext_key_usage;
    if (eku !== undefined && !eku.includes(CLIENT_AUTH_OID)) {
      return refuse("client certificate is not valid for client authentication (no clientAuth EKU)");
    }
    let names: CertificateNames;
    try {
      names = readCertificateNames(cert.raw);
    } catch (error) {
      return refuse(`client certificate is unreadable: ${(error as Error).message}`);
    }
    const uris = names.san.uris;
    if (uris.length > 0) {
      if (uris.length !== 1) return refuse("client certificate carries more than one URI SAN");
      const identity = parseSpiffeId(uris[0] as string, this.trustDomain);
      if (identity === null) {
        return refuse(
          `client certificate SPIFFE ID "${uris[0]}" is not a workload of trust domain ${this.trustDomain}`,
        );
      }
      return {
        ok: true,
        caller: { identity, method: "service-cert", credentialNotAfter: notAfter },
        notAfter,
      };
    }
    const cn = names.subjectCommonName;
    const bootstrap = cn === null ? null : parseBootstrapCommonName(cn);
    if (bootstrap === null) {
      return refuse(
        `client certificate CN "${cn ?? ""}" is neither an xDS bootstrap name (<uuid>.<sa>.<ns>) nor a SPIFFE workload`,
      );
    }
    return {
      ok: true,
      caller: {
        identity: bootstrap.identity,
        method: "bootstrap-cert",
        podUid: bootstrap.podUid,
        credentialNotAfter: notAfter,
      },
      notAfter,
    };
  }
}

/** What authentication reads from a call: its TLS peer and its metadata. */
export interface AuthnCall extends PeerCertificateSource {
  readonly metadata: { get(key: string): (string | Buffer)[] };
  /** "address:port" of the caller. */
  getPeer(): string;
}

export type CallerResult =
  | { readonly ok: true; readonly caller: Caller }
  | {
      readonly ok: false;
      readonly status: "UNAUTHENTICATED" | "UNAVAILABLE" | "RESOURCE_EXHAUSTED";
      readonly message: string;
    };

/** A bearer token, when present, decides; otherwise the client certificate does. */
export class CallerAuthenticator {
  constructor(
    private readonly clientCertificates: ClientCertificateAuthenticator,
    private readonly tokens: TokenAuthenticator | null,
  ) {}

  async authenticate(call: AuthnCall): Promise<CallerResult> {
    const header = call.metadata.get("authorization")[0];
    if (header !== undefined) {
      const match = /^Bearer (.+)$/i.exec(String(header));
      if (match === null)
        return {
          ok: false,
          status: "UNAUTHENTICATED",
          message: 'authorization metadata is not "Bearer <token>"',
        };
      if (this.tokens === null) {
        return {
          ok: false,
          status: "UNAUTHENTICATED",
          message:
            "this server does not accept ServiceAccount tokens (it runs without the Kubernetes API); use a client certificate",
        };
      }
      return this.tokens.authenticate(match[1] as string, peerAddress(call.getPeer()));
    }
    const result = this.clientCertificates.authenticate(call);
    return result.ok ? result : { ok: false, status: "UNAUTHENTICATED", message: result.message };
  }
}

/** The address part of grpc-js's "address:port" peer string (IPv6 addresses hold colons too). */
export function peerAddress(peer: string): string {
  const colon = peer.lastIndexOf(":");
  return colon > 0 && /^\d+$/.test(peer.slice(colon + 1)) ? peer.slice(0, colon) : peer;
}
