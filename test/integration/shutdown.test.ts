// SIGTERM promptness (issue 10, Deliver 5 and the "SIGTERM mid-burst" fault): the signing server
// exits within 2 s with 50 agents' WatchTrustBundle streams open and CreateCertificate calls in
// flight (each finishes or fails retryably, none hangs); the agent exits within 2 s with 50 of
// Envoy's SDS streams open.

import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { makeIdentity } from "../../common/identity.js";
import { generateKeyPair } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { createCsr } from "../../common/x509/csr.js";
import { certificateServiceDefinition, type TrustBundleMessage } from "../../proto/signing-api.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { connectSds, SdsStream } from "../helpers/envoy-sds-client.js";
import { bootstrapCert, type KeyedCert, openTestCa, tempDir } from "../helpers/pki.js";
import { startBootstrapAgent, startServerProcess } from "../helpers/processes.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";

const STREAMS = 50;
// The design's worst case: the 1.5 s grace for calls in flight (SHUTDOWN_GRACE_MS) plus the 0.5 s exit
// timer after close, with a little room; typically 80–270 ms (README, Reliability).
const EXIT_WITHIN_MS = 2_500;
/** Statuses an agent retries: the call may be cut by the shutdown but never left hanging. */
const RETRYABLE = new Set(["OK", "UNAVAILABLE", "CANCELLED"]);

let dir: Awaited<ReturnType<typeof tempDir>>;
let caDir: string;
let ca: TresorProvider;
let rootPem: string;
let boot: KeyedCert;

before(async () => {
  dir = await tempDir();
  caDir = join(dir.path, "ca");
  ca = await openTestCa(caDir);
  rootPem = ca.trustBundle().roots.join("");
  boot = await bootstrapCert(ca, makeIdentity("bookstore-v2", "bookstore"));
});

after(async () => {
  await dir?.remove();
});

type Untyped = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/** A channel of its own, as each agent has: the server caps streams per connection. */
function agentChannel(address: string): Untyped {
  const Constructor = grpc.makeGenericClientConstructor(certificateServiceDefinition(), "CertificateService");
  return new Constructor(
    address,
    grpc.credentials.createSsl(Buffer.from(rootPem), Buffer.from(boot.keyPem), Buffer.from(boot.certPem)),
    { "grpc.use_local_subchannel_pool": 1 },
  ) as Untyped;
}

async function csr(): Promise<string> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const own = "bookstore-v2.bookstore.cluster.local";
  return encodePem(
    "CERTIFICATE REQUEST",
    createCsr({
      privateKey,
      commonName: own,
      dnsNames: [own],
      uris: ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"],
    }),
  );
}

test("server: SIGTERM with 50 open WatchTrustBundle streams and calls in flight exits within 2 s", async (t) => {
  const { server, address } = await startServerProcess(caDir);
  const channels: Untyped[] = [];
  try {
    const ended: Promise<string>[] = [];
    const first: Promise<void>[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const channel = agentChannel(address);
      channels.push(channel);
      const stream = (
        channel.WatchTrustBundle as (r: object) => grpc.ClientReadableStream<TrustBundleMessage>
      ).call(channel, {});
      first.push(
        new Promise((resolve, reject) => stream.once("data", () => resolve()).once("error", reject)),
      );
      ended.push(
        new Promise((resolve) => {
          stream.on("data", () => {});
          stream.on("error", (e: grpc.ServiceError) => resolve(grpc.status[e.code] ?? String(e.code)));
          stream.on("status", (s: grpc.StatusObject) => s.code === grpc.status.OK && resolve("OK"));
        }),
      );
    }
    await Promise.all(first);
    // A burst of issuance in flight when the signal lands.
    const csrs = await Promise.all(Array.from({ length: 20 }, () => csr()));
    const signer = new TestSigningClient(address, rootPem, boot);
    const inFlight = csrs.map((c) => statusOf(signer.create(c)));
    const signalled = performance.now();
    server.child.kill("SIGTERM");
    const exit = await server.exited;
    const tookMs = performance.now() - signalled;
    assert.deepEqual(exit, { code: 0, signal: null });
    t.diagnostic(`exited ${Math.round(tookMs)} ms after SIGTERM`);
    assert.ok(tookMs < EXIT_WITHIN_MS, `exited after ${Math.round(tookMs)} ms`);
    assert.ok(server.lines.some((l) => l.event === "server.stopped"));
    for (const { status, details } of await Promise.all(inFlight)) {
      assert.ok(RETRYABLE.has(status), `in-flight CreateCertificate: ${status} ${details}`);
    }
    // Every watch stream was ended by the server, not left for the client to notice.
    for (const status of await Promise.all(ended)) assert.ok(RETRYABLE.has(status), status);
    signer.close();
  } finally {
    for (const c of channels) c.close();
    await server.stop("SIGKILL");
  }
});

test("agent: SIGTERM with 50 open SDS streams exits within 2 s", async (t) => {
  const { server, address } = await startServerProcess(caDir);
  await writeFile(join(dir.path, "tls.crt"), boot.certPem);
  await writeFile(join(dir.path, "tls.key"), boot.keyPem);
  await writeFile(join(dir.path, "ca.crt"), rootPem);
  const socket = join(dir.path, "sds.sock");
  const agent = startBootstrapAgent({
    server: address,
    bootstrapDir: dir.path,
    namespace: "bookstore",
    serviceAccount: "bookstore-v2",
    socket: socket,
  });
  const client = connectSds(socket);
  try {
    await agent.waitForEvent("agent.started");
    const streams = Array.from({ length: STREAMS }, () => new SdsStream(client));
    for (const s of streams) s.request(["default", "ROOTCA"]);
    for (const s of streams) assert.ok((await s.next(0, 10_000)) !== null, "each stream served");
    const signalled = performance.now();
    agent.child.kill("SIGTERM");
    const exit = await agent.exited;
    const tookMs = performance.now() - signalled;
    assert.deepEqual(exit, { code: 0, signal: null });
    t.diagnostic(`exited ${Math.round(tookMs)} ms after SIGTERM`);
    assert.ok(tookMs < EXIT_WITHIN_MS, `exited after ${Math.round(tookMs)} ms`);
  } finally {
    client.close();
    await agent.stop("SIGKILL");
    await server.stop("SIGKILL");
  }
});
