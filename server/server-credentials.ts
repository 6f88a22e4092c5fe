// The signing port's TLS credentials: grpc-js's certificate-provider credentials (the serving
// certificate and the mesh roots change while the server runs), without TLS session tickets.
//
// Why: a first contact (a pod's bootstrap certificate on a new connection) is where a storm spends
// its time, and with OpenSSL 3.0 (Node 20) the two stateless TLS 1.3 tickets a server sends after
// every full handshake cost a third of it: each is built by encoding the session, decoding it
// again (peer certificate included, its key through OpenSSL 3.0's slow provider decoder) and
// encoding it once more. With SSL_OP_NO_TICKET OpenSSL sends stateful tickets instead (a session
// ID, nothing encoded), and as node:tls keeps no server session cache unless asked ('newSession'
// listeners; grpc-js adds none), they resume nothing. Measured: ≈ 5.0 → 3.4 ms of server CPU per
// mutual-TLS handshake on the bench machine (README, figure 3). Nothing used resumption: grpc-js
// keeps no client sessions and the agent keeps its connection. Every connection is now a full
// handshake with its client certificate verified, which a resumption would have skipped, so
// nothing is weakened.
//
// grpc-js builds the server's SecureContext from {ca, cert, key} alone, at start and after every
// update; `secureOptions` is added to both (node:tls's setSecureContext reads it from the options
// it is given). test/unit/server-credentials.test.ts pins that no ticket resumes a session, so a
// grpc-js upgrade that moves these hooks fails a test instead of silently bringing them back.

import { constants } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

type Options = Record<string, unknown> | null;

interface Hooks {
  _getConstructorOptions(): Options;
  updateSecureContextOptions(options: Options): void;
}

/** Stateless tickets off (RFC 5077; in TLS 1.3 OpenSSL then sends stateful ones, resumed from no cache). */
const NO_TICKETS = constants.SSL_OP_NO_TICKET;

export function meshServerCredentials(
  identity: grpc.experimental.CertificateProvider,
  roots: grpc.experimental.CertificateProvider,
): grpc.ServerCredentials {
  // Client certificates are requested but not required by TLS: the handler decides, so callers
  // without one get UNAUTHENTICATED with a reason instead of a bare handshake failure.
  const credentials = grpc.experimental.createCertificateProviderServerCredentials(identity, roots, false);
  const hooks = credentials as unknown as Hooks;
  const constructorOptions = hooks._getConstructorOptions.bind(hooks);
  const update = hooks.updateSecureContextOptions.bind(hooks);
  hooks._getConstructorOptions = () => withoutTickets(constructorOptions());
  hooks.updateSecureContextOptions = (options) => update(withoutTickets(options));
  return credentials;
}

function withoutTickets(options: Options): Options {
  if (options === null) return null;
  const secureOptions = typeof options.secureOptions === "number" ? options.secureOptions : 0;
  return { ...options, secureOptions: secureOptions | NO_TICKETS };
}
