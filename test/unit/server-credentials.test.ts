// The signing port's credentials (server/server-credentials.ts): no stateless TLS session tickets
// (their cost on every first contact, with OpenSSL 3.0, is a third of the handshake), also after the
// serving certificate changes: what the server still sends (TLS 1.3 stateful tickets, kept in no
// cache) resumes nothing, so every connection is a full handshake with its client certificate. grpc-js's own credentials send tickets that do resume, so the test can tell
// them apart. That client certificates are still requested and verified with these credentials
// is test/unit/peer-connection.test.ts's (and the signing-api and security tests', through main.ts).

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { connect } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { makeIdentity } from "../../common/identity.js";
import { MutableCertificateProvider } from "../../common/tls-material.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { meshServerCredentials } from "../../server/server-credentials.js";
import { bootstrapCert, issueWithCa, type KeyedCert, openTestCa, tempDir } from "../helpers/pki.js";

let dir: Awaited<ReturnType<typeof tempDir>>;
let ca: TresorProvider;
let rootPem: string;
let boot: KeyedCert;
const servers: grpc.Server[] = [];

before(async () => {
  dir = await tempDir();
  ca = await openTestCa(join(dir.path, "ca"));
  rootPem = ca.trustBundle().roots.join("");
  boot = await bootstrapCert(ca, makeIdentity("bookstore-v2", "bookstore"));
});

after(async () => {
  for (const server of servers) server.forceShutdown();
  await dir.remove();
});

async function serve(make: (tls: MutableCertificateProvider) => grpc.ServerCredentials) {
  const tls = new MutableCertificateProvider();
  tls.setCaCertificates(rootPem);
  const serving = await issueWithCa(ca, "service", { commonName: "localhost", dnsNames: ["localhost"] });
  tls.setIdentity(serving.certPem, serving.keyPem);
  const server = new grpc.Server();
  servers.push(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", make(tls), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return { port, tls };
}

interface Handshake {
  readonly protocol: string | null;
  readonly reused: boolean;
  readonly ticket: Buffer | undefined;
  readonly serverCertSubject: string;
}

/** A TLS 1.3 client with the bootstrap certificate; keeps the last ticket that arrives in 300 ms. */
function handshake(port: number, session?: Buffer): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    let ticket: Buffer | undefined;
    const socket = connect({
      port,
      host: "127.0.0.1",
      servername: "localhost",
      ca: rootPem,
      cert: boot.certPem,
      key: boot.keyPem,
      ALPNProtocols: ["h2"],
      minVersion: "TLSv1.3",
      ...(session === undefined ? {} : { session }),
    });
    socket.on("session", (s: Buffer) => {
      ticket = s;
    });
    socket.on("error", reject);
    socket.on("secureConnect", () => {
      // Tickets follow the handshake in the server's next flight; give them time to arrive.
      setTimeout(() => {
        const result = {
          protocol: socket.getProtocol(),
          reused: socket.isSessionReused(),
          ticket,
          serverCertSubject: socket.getPeerX509Certificate()?.subject ?? "",
        };
        socket.destroy();
        resolve(result);
      }, 300);
    });
  });
}

test("grpc-js's certificate-provider credentials: a ticket resumes the session (the reference)", async () => {
  const { port } = await serve((tls) =>
    grpc.experimental.createCertificateProviderServerCredentials(tls, tls, false),
  );
  const first = await handshake(port);
  assert.equal(first.protocol, "TLSv1.3");
  assert.ok(first.ticket !== undefined, "the reference server sends tickets");
  const again = await handshake(port, first.ticket);
  assert.equal(again.reused, true, "and they resume");
});

test("the mesh credentials: no ticket resumes a session, also after the serving certificate changes", async () => {
  const { port, tls } = await serve((t) => meshServerCredentials(t, t));
  const first = await handshake(port);
  assert.equal(first.protocol, "TLSv1.3");
  if (first.ticket !== undefined) {
    assert.equal((await handshake(port, first.ticket)).reused, false, "a full handshake again");
  }
  const next = await issueWithCa(ca, "service", { commonName: "renewed", dnsNames: ["localhost"] });
  tls.setIdentity(next.certPem, next.keyPem);
  await new Promise((r) => setTimeout(r, 50));
  const after = await handshake(port);
  assert.match(after.serverCertSubject, /CN=renewed/, "the new serving certificate is in use");
  if (after.ticket !== undefined) {
    assert.equal((await handshake(port, after.ticket)).reused, false, "no resumption after the update");
  }
});
