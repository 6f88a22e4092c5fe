// The TLS connection under a gRPC call, so that what can be learnt about a connection is learnt
// once per connection instead of once per call. grpc-js's public getAuthContext() builds the whole
// peer-certificate object (subject, issuer, three fingerprints…) on every call, which measured
// ≈7 % of the server's CPU with renewing agents; the handshake's answer cannot change during a
// connection (HTTP/2 forbids renegotiation, RFC 9113 §9.2.1), so it is read once per HTTP/2
// session and kept in a WeakMap that dies with the session.
//
// grpc-js does not expose the session: it is found by following the call's wrappers
// (ServerUnaryCall/ServerWritableStream → `call`, server interceptors → `nextCall`, and
// BaseServerInterceptingCall → `stream.session`). test/unit/peer-connection.test.ts pins that this
// walk finds the session under the installed grpc-js, so an upgrade that moves it fails a test;
// and when it is not found the callers fall back to getAuthContext(), which is correct, only slower.

import { TLSSocket } from "node:tls";

/** The HTTP/2 session (one per TCP connection) and its TLS socket. */
export interface TlsConnection {
  readonly session: object;
  readonly socket: TLSSocket;
}

interface Wrapper {
  readonly call?: unknown;
  readonly nextCall?: unknown;
  readonly stream?: { readonly session?: { readonly socket?: unknown } | undefined } | undefined;
}

/** At most this many wrappers are followed (a call, our interceptor, grpc-js's base call). */
const MAX_DEPTH = 8;

/** The TLS connection a call arrived on; undefined when it cannot be found or is not TLS. */
export function tlsConnectionOf(call: object): TlsConnection | undefined {
  let at = call as Wrapper | null | undefined;
  for (let depth = 0; depth < MAX_DEPTH && typeof at === "object" && at !== null; depth++) {
    const session = at.stream?.session;
    if (session !== undefined && session !== null) {
      const socket = session.socket;
      return socket instanceof TLSSocket ? { session, socket } : undefined;
    }
    at = (at.call ?? at.nextCall) as Wrapper | null | undefined;
  }
  return undefined;
}

/** What grpc-js's getAuthContext() offers; every server call has it. */
export interface AuthContextSource {
  getAuthContext(): { sslPeerCertificate?: unknown };
}

/**
 * Whether TLS verified a client certificate on this call's connection against the mesh roots
 * (the server asks for one but does not require it: checkClientCertificate is false).
 */
export function hasVerifiedClientCertificate(call: AuthContextSource): boolean {
  const connection = tlsConnectionOf(call);
  if (connection !== undefined) return connection.socket.authorized;
  return call.getAuthContext().sslPeerCertificate !== undefined;
}
