// The agent honours RESOURCE_EXHAUSTED with grpc-retry-pushback-ms (issue 10, Deliver 3): a real
// gRPC+TLS server refuses each agent's first request with a hint; every agent waits at least the
// hint (its own backoff would retry within milliseconds), and the fleet comes back spread over the
// jitter instead of at one instant. The refusal is not an escalating failure: the next attempt
// after the hint succeeds and nothing is left of the backoff.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { retryPushbackMs, SignerClient } from "../../agent/signer-client.js";
import { signingServerSpiffeId } from "../../common/identity.js";
import { MutableCertificateProvider } from "../../common/tls-material.js";
import {
  type CreateCertificateRequest,
  type CreateCertificateResponse,
  certificateServiceDefinition,
} from "../../proto/signing-api.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { retryAfter } from "../../server/request-guard.js";
import { captureLog } from "../helpers/log-capture.js";
import { issueWithCa, openTestCa, tempDir } from "../helpers/pki.js";
import { testRotator } from "../helpers/rotator.js";
import { bookstoreLeafResponse } from "../helpers/signing-client.js";

const AGENTS = 20;
const PUSHBACK_MS = 1_000;

let dir: Awaited<ReturnType<typeof tempDir>>;
let ca: TresorProvider;
let server: grpc.Server;
let address: string;
/** Arrival times of CreateCertificate calls, per connection (each agent has its own). */
const arrivals = new Map<string, number[]>();

before(async () => {
  dir = await tempDir();
  ca = await openTestCa(join(dir.path, "ca"));
  const serving = await issueWithCa(ca, "server", {
    commonName: "osm-cert",
    dnsNames: ["localhost"],
    uris: [signingServerSpiffeId("cluster.local")],
  });
  server = new grpc.Server();
  server.addService(certificateServiceDefinition(), {
    CreateCertificate(
      call: grpc.ServerUnaryCall<CreateCertificateRequest, CreateCertificateResponse>,
      callback: grpc.sendUnaryData<CreateCertificateResponse>,
    ) {
      const seen = arrivals.get(call.getPeer()) ?? [];
      seen.push(Date.now());
      arrivals.set(call.getPeer(), seen);
      if (seen.length === 1) {
        callback({
          code: grpc.status.RESOURCE_EXHAUSTED,
          details: "the server is signing 512 requests already (its limit); retry in 1.0 s",
          metadata: retryAfter(PUSHBACK_MS / 1000),
        });
        return;
      }
      callback(null, bookstoreLeafResponse(ca, call.request.csr, 3_600_000));
    },
    WatchTrustBundle() {},
    ReportTrustBundle() {},
  });
  const credentials = grpc.ServerCredentials.createSsl(null, [
    { cert_chain: Buffer.from(serving.certPem), private_key: Buffer.from(serving.keyPem) },
  ]);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", credentials, (e, p) => (e ? reject(e) : resolve(p))),
  );
  address = `127.0.0.1:${port}`;
});

after(async () => {
  server.forceShutdown();
  await dir.remove();
});

test("grpc-retry-pushback-ms is read from the refusal: whole milliseconds only, capped", () => {
  const md = (value: string) => {
    const m = new grpc.Metadata();
    m.set("grpc-retry-pushback-ms", value);
    return m;
  };
  assert.equal(retryPushbackMs(md("1500")), 1500);
  assert.equal(retryPushbackMs(md("0")), 0);
  assert.equal(retryPushbackMs(md("-1")), null);
  assert.equal(retryPushbackMs(md("1e9")), null);
  assert.equal(retryPushbackMs(md("soon")), null);
  assert.equal(retryPushbackMs(md("99999999999")), null);
  assert.equal(retryPushbackMs(md("3600000")), 300_000, "an hour is capped at five minutes");
  assert.equal(retryPushbackMs(new grpc.Metadata()), null);
  assert.equal(retryPushbackMs(undefined), null);
});

test("refused agents wait at least the hint, spread by jitter, then succeed without escalating", async () => {
  const log = captureLog();
  const root = ca.trustBundle().roots.join("");
  const agents = Array.from({ length: AGENTS }, () => {
    const tls = new MutableCertificateProvider();
    const signer = new SignerClient({
      target: address,
      tls,
      clientCertificate: false,
      serverSpiffeId: signingServerSpiffeId("cluster.local"),
    });
    const { cache, rotator } = testRotator({
      roots: root,
      signer,
      tls,
      logger: log.logger,
      // Without the hint an agent would be back within 10 ms.
      backoff: { baseMs: 5, capMs: 10 },
    });
    return { cache, signer, rotator };
  });
  try {
    for (const agent of agents) agent.rotator.start();
    const deadline = Date.now() + 20_000;
    while (agents.some((a) => a.cache.validCertificate() === null) && Date.now() < deadline) await sleep(50);
    assert.ok(
      agents.every((a) => a.cache.validCertificate() !== null),
      "every agent got its certificate after the hint",
    );
    assert.equal(arrivals.size, AGENTS, "one connection per agent");
    const gaps = [...arrivals.values()].map((times) => {
      assert.equal(times.length, 2, "exactly one refused attempt and one that succeeded");
      return (times[1] as number) - (times[0] as number);
    });
    for (const gap of gaps) {
      assert.ok(gap >= PUSHBACK_MS - 20, `waited ${gap} ms; the hint was ${PUSHBACK_MS} ms`);
      // Hint plus at most as long again, plus generous room for a loaded machine.
      assert.ok(gap <= 2 * PUSHBACK_MS + 3_000, `waited ${gap} ms`);
    }
    const spread = Math.max(...gaps) - Math.min(...gaps);
    assert.ok(spread >= 250, `the fleet came back spread out, not at one instant (spread ${spread} ms)`);
    const refused = log.lines.filter((l) => l.event === "certificate.request_failed");
    assert.equal(refused.length, AGENTS);
    for (const line of refused) {
      assert.equal(line.status, "RESOURCE_EXHAUSTED");
      assert.equal(line.retryAfterMs, PUSHBACK_MS);
    }
    for (const { rotator } of agents) {
      const status = rotator.status();
      assert.equal(status.consecutiveFailures, 0);
      assert.equal(status.lastError, null);
    }
  } finally {
    for (const agent of agents) {
      agent.rotator.stop();
      agent.signer.close();
    }
  }
});
