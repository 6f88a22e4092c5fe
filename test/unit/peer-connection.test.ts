// The per-connection fast path of authentication (server/peer-connection.ts): under the installed
// grpc-js, a handler behind our interceptor finds the call's HTTP/2 session and TLS socket; calls on
// one connection share it and another connection has its own; the verdict from the connection
// equals the verdict grpc-js's getAuthContext() path gives; a connection without a client
// certificate is refused either way.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { makeIdentity } from "../../common/identity.js";
import { MetricsRegistry } from "../../common/metrics.js";
import { MutableCertificateProvider } from "../../common/tls-material.js";
import { certificateServiceDefinition } from "../../proto/signing-api.js";
import { type AuthnResult, ClientCertificateAuthenticator } from "../../server/authn.js";
import { hasVerifiedClientCertificate, tlsConnectionOf } from "../../server/peer-connection.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { RequestGuard } from "../../server/request-guard.js";
import { meshServerCredentials } from "../../server/server-credentials.js";
import { bootstrapCert, issueWithCa, type KeyedCert, openTestCa, tempDir } from "../helpers/pki.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";

interface Seen {
  session: object | undefined;
  authorized: boolean | undefined;
  error?: unknown;
  verified: boolean;
  viaConnection: AuthnResult;
  viaAuthContext: AuthnResult;
}

let dir: Awaited<ReturnType<typeof tempDir>>;
let ca: TresorProvider;
let rootPem: string;
let boot: KeyedCert;
let server: grpc.Server;
let address: string;
const seen: Seen[] = [];
const identity = makeIdentity("bookstore-v2", "bookstore");

before(async () => {
  dir = await tempDir();
  ca = await openTestCa(join(dir.path, "ca"));
  rootPem = ca.trustBundle().roots.join("");
  boot = await bootstrapCert(ca, identity);
  const serving = await issueWithCa(ca, "service", { commonName: "localhost", dnsNames: ["localhost"] });
  const authenticator = new ClientCertificateAuthenticator("cluster.local");
  const guard = new RequestGuard({
    receiveTimeoutMs: 5_000,
    maxReceiving: 64,
    metrics: new MetricsRegistry(),
  });
  server = new grpc.Server({ interceptors: [guard.interceptor] });
  server.addService(certificateServiceDefinition(), {
    CreateCertificate: (call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => {
      const connection = tlsConnectionOf(call);
      seen.push({
        session: connection?.session,
        authorized: connection?.socket.authorized,
        error: connection?.socket.authorizationError,
        verified: hasVerifiedClientCertificate(call),
        viaConnection: authenticator.authenticate(call),
        // Only getAuthContext(): the walk finds nothing, so the fallback decides.
        viaAuthContext: new ClientCertificateAuthenticator("cluster.local").authenticate({
          getAuthContext: () => call.getAuthContext(),
        }),
      });
      callback({ code: grpc.status.UNIMPLEMENTED, details: "recorded" });
    },
    WatchTrustBundle: () => {},
    ReportTrustBundle: () => {},
  });
  // As the server makes them (server/main.ts): a client certificate asked for, not required.
  const tls = new MutableCertificateProvider();
  tls.setCaCertificates(rootPem);
  tls.setIdentity(serving.certPem, serving.keyPem);
  const credentials = meshServerCredentials(tls, tls);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", credentials, (e, p) => (e ? reject(e) : resolve(p))),
  );
  address = `localhost:${port}`;
});

after(async () => {
  server.forceShutdown();
  await dir.remove();
});

const OWN = { "grpc.use_local_subchannel_pool": 1 };

test("the call's TLS connection is found; one per connection, shared by its calls", async () => {
  seen.length = 0;
  const a = new TestSigningClient(address, rootPem, boot, undefined, OWN);
  const b = new TestSigningClient(address, rootPem, boot, undefined, OWN);
  try {
    for (const client of [a, a, b])
      assert.equal((await statusOf(client.create("x"))).status, "UNIMPLEMENTED");
  } finally {
    a.close();
    b.close();
  }
  assert.equal(seen.length, 3);
  for (const s of seen) {
    assert.ok(s.session !== undefined, "session found through grpc-js's call wrappers");
    assert.equal(s.authorized, true, String(s.error));
    assert.equal(s.verified, true);
    assert.ok(s.viaConnection.ok);
    assert.deepEqual(s.viaConnection, s.viaAuthContext);
    assert.equal(s.viaConnection.caller.method, "bootstrap-cert");
    assert.equal(s.viaConnection.caller.identity.serviceAccount, "bookstore-v2");
  }
  assert.equal(seen[0]?.session, seen[1]?.session, "two calls, one connection");
  assert.notEqual(seen[0]?.session, seen[2]?.session, "another connection, another session");
});

test("a connection without a client certificate is refused on both paths", async () => {
  seen.length = 0;
  const anonymous = new TestSigningClient(address, rootPem, undefined, undefined, OWN);
  try {
    await statusOf(anonymous.create("x"));
  } finally {
    anonymous.close();
  }
  const [s] = seen;
  assert.ok(s !== undefined && s.session !== undefined);
  assert.equal(s.authorized, false);
  assert.equal(s.verified, false);
  assert.equal(s.viaConnection.ok, false);
  assert.deepEqual(s.viaConnection, s.viaAuthContext);
  assert.match(s.viaConnection.ok ? "" : s.viaConnection.message, /no valid client certificate/);
});
