// Property tests of the agent's SDS server (issue 10, Deliver 2c): random sequences of
// StreamSecrets and DeltaSecrets requests — names from a pool of valid, OSM-style, foreign and
// garbage names; current, empty, stale and garbage nonces; NACKs; (un)subscriptions; bad type_urls;
// rotations in between — against the real SdsServer on a Unix socket, driven by Envoy's canonical
// protos. A small model of the xDS state machine says after each step whether a response is due and
// what it must hold: nothing for a stale nonce or an ACK until a change, never a foreign identity's
// certificate, and a stream that ends only with INVALID_ARGUMENT for a request the server refuses.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { MAX_NAMES_PER_STREAM, SdsServer } from "../../agent/sds/sds-server.js";
import { SecretCache, type WorkloadCertificate } from "../../agent/secret-cache.js";
import { makeIdentity } from "../../common/identity.js";
import { createLogger } from "../../common/logger.js";
import { MetricsRegistry } from "../../common/metrics.js";
import {
  connectSds,
  type DecodedSecret,
  decodeSecrets,
  type SdsResponse,
  SECRET_TYPE_URL,
} from "../helpers/envoy-sds-client.js";
import { issueWithCa, openTestCa, tempDir } from "../helpers/pki.js";
import {
  forbidUnhandledRejections,
  heapUsedMb,
  propertyRuns,
  propertySeed,
  SOAK,
} from "../helpers/property.js";

const RUNS = propertyRuns(25);
const IDENTITY = makeIdentity("bookstore-v2", "bookstore");
const OWN_CERT = "service-cert:bookstore/bookstore-v2";
const CERT_NAMES = new Set(["default", OWN_CERT]);
const BUNDLE_NAMES = new Set([
  "ROOTCA",
  "root-cert-for-mtls-inbound:bookstore/bookstore-v2",
  "root-cert-for-mtls-outbound:bookstore/bookstore-v2",
  "root-cert-for-mtls-outbound:bookwarehouse/bookwarehouse",
]);
/** Names this agent must never answer: another identity's certificate, near misses, garbage. */
const FOREIGN_NAMES = [
  "service-cert:bookwarehouse/bookwarehouse",
  "service-cert:bookstore/bookstore-v2/extra",
  "service-cert:bookstore/",
  "service-cert:",
  "Default",
  "rootca",
  "",
];
const known = (name: string) => CERT_NAMES.has(name) || BUNDLE_NAMES.has(name);
const WAIT_MS = 5_000;
/** After a sequence, how long to listen for a response the model says must not come. */
const QUIET_MS = 100;

forbidUnhandledRejections();

let pki: Awaited<ReturnType<typeof tempDir>>;
let certs: [WorkloadCertificate, WorkloadCertificate];
let rootPem: string;
let socketDir: string;
let cache: SecretCache;
let server: SdsServer;
let client: ReturnType<typeof connectSds>;
/** Which of `certs` the cache holds; flipped by each rotation step. */
let current = 0;

function workload(pem: { certPem: string; keyPem: string }): WorkloadCertificate {
  const x509 = new X509Certificate(pem.certPem);
  return {
    certChainPem: pem.certPem,
    privateKeyPem: pem.keyPem,
    serialNumber: x509.serialNumber,
    notBefore: new Date(x509.validFrom),
    notAfter: new Date(x509.validTo),
  };
}

before(async () => {
  pki = await tempDir();
  const ca = await openTestCa(pki.path);
  rootPem = ca.trustBundle().roots.join("");
  const names = { commonName: "bookstore-v2.bookstore.cluster.local" };
  certs = [
    workload(await issueWithCa(ca, "service", names)),
    workload(await issueWithCa(ca, "service", names)),
  ];
  socketDir = mkdtempSync(join(tmpdir(), "osm-cert-sds-prop-"));
  cache = new SecretCache();
  cache.setCertificate(certs[0]);
  cache.setTrustBundle(rootPem);
  // Discard logs: 10,000 cases of hostile names would otherwise fill memory with warnings.
  const sink = new Writable({ write: (_c, _e, done) => done() });
  server = new SdsServer({
    cache,
    identity: IDENTITY,
    logger: createLogger("sds-property", { level: "warn", destination: sink }),
    metrics: new MetricsRegistry(),
  });
  await server.listen(join(socketDir, "sds.sock"), 0o600);
  client = connectSds(join(socketDir, "sds.sock"));
});

after(async () => {
  client?.close();
  await server?.close();
  rmSync(socketDir, { recursive: true, force: true });
  await pki?.remove();
});

/**
 * Rotates the certificate once the server has read every request written before: a FetchSecrets on
 * the same connection is answered only after its own end-of-stream, which arrives behind them.
 * Without it, a rotation could overtake a request still in flight and the model would be wrong.
 */
async function rotate(): Promise<void> {
  await new Promise<void>((resolve, reject) =>
    (client.FetchSecrets as (r: object, cb: (e: grpc.ServiceError | null) => void) => void).call(
      client,
      { resource_names: ["ROOTCA"], type_url: SECRET_TYPE_URL },
      (error) => (error ? reject(error) : resolve()),
    ),
  );
  current = 1 - current;
  cache.setCertificate(certs[current] as WorkloadCertificate);
}

/** Checks what one decoded Secret holds: the current cert for cert names, the bundle for the rest. */
function checkSecret(secret: DecodedSecret): void {
  assert.ok(known(secret.name), `served a name it must not: ${JSON.stringify(secret.name)}`);
  if (CERT_NAMES.has(secret.name)) {
    assert.equal(
      secret.certificateChain,
      certs[current]?.certChainPem,
      `${secret.name}: the current certificate`,
    );
    assert.equal(secret.privateKey, certs[current]?.privateKeyPem);
  } else {
    assert.equal(secret.trustedCa, rootPem);
    assert.equal(secret.privateKey, undefined, "no key under a trust-bundle name");
  }
}

/** A duplex stream with its responses queued and its final status recorded. */
class Recorder<Res> {
  readonly responses: Res[] = [];
  error: grpc.ServiceError | undefined;
  private wake: (() => void) | undefined;
  constructor(readonly call: grpc.ClientDuplexStream<object, Res>) {
    call.on("data", (r: Res) => {
      this.responses.push(r);
      this.wake?.();
    });
    call.on("error", (e: grpc.ServiceError) => {
      this.error = e;
      this.wake?.();
    });
  }
  async next(index: number): Promise<Res> {
    const deadline = Date.now() + WAIT_MS;
    while (this.responses.length <= index) {
      assert.equal(this.error, undefined, `stream ended: ${this.error?.details}`);
      const left = deadline - Date.now();
      assert.ok(left > 0, `response #${index + 1} did not come`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.responses[index] as Res;
  }
  async ended(): Promise<grpc.ServiceError> {
    const deadline = Date.now() + WAIT_MS;
    while (this.error === undefined && Date.now() < deadline) await sleep(5);
    assert.ok(this.error !== undefined, "the stream should have ended");
    return this.error;
  }
}

const nameArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...CERT_NAMES, ...BUNDLE_NAMES) },
  { weight: 2, arbitrary: fc.constantFrom(...FOREIGN_NAMES) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
);
const namesArb = fc.array(nameArb, { maxLength: 5 });
/** Which nonce a request carries, relative to the last response the client saw. */
const nonceArb = fc.constantFrom("current", "current", "current", "empty", "stale", "garbage");
const typeUrlArb = fc.oneof(
  { weight: 30, arbitrary: fc.constant(SECRET_TYPE_URL) },
  { weight: 3, arbitrary: fc.constant("") },
  { weight: 1, arbitrary: fc.constantFrom("type.googleapis.com/envoy.config.cluster.v3.Cluster", "garbage") },
);

// ---- StreamSecrets (state of the world) ----

type SotwStep =
  | { kind: "request"; names: string[]; nonce: string; nack: boolean; typeUrl: string; version: string }
  | { kind: "rotate" }
  | { kind: "too-many" };

const sotwStepArb: fc.Arbitrary<SotwStep> = fc.oneof(
  {
    weight: 10,
    arbitrary: fc.record({
      kind: fc.constant("request" as const),
      names: namesArb,
      nonce: nonceArb,
      nack: fc.boolean(),
      typeUrl: typeUrlArb,
      version: fc.string({ maxLength: 8 }),
    }),
  },
  { weight: 3, arbitrary: fc.constant({ kind: "rotate" as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: "too-many" as const }) },
);

/** The server's notion of "same names" (an ACK): same count, every new name among the old. */
const sameNames = (a: readonly string[], b: readonly string[]) =>
  a.length === b.length && b.every((n) => a.includes(n));

/** `garbageNonce` holds a "-", so it can never equal a server nonce (a base-36 counter). */
async function runSotw(steps: SotwStep[], garbageNonce: string): Promise<void> {
  const call = (client.StreamSecrets as () => grpc.ClientDuplexStream<object, SdsResponse>).call(client);
  const stream = new Recorder(call);
  // The model: what the client last received and what the server holds for the stream.
  const nonces: string[] = [];
  let names: string[] = [];
  let expected = 0;
  try {
    for (const step of steps) {
      if (step.kind === "rotate") {
        await rotate();
        if (nonces.length > 0 && names.some((n) => CERT_NAMES.has(n))) expected++;
      } else {
        const lastNonce = nonces.at(-1) ?? "";
        const tooMany = step.kind === "too-many";
        const request = tooMany
          ? {
              names: Array.from({ length: MAX_NAMES_PER_STREAM + 1 }, (_, i) => `n${i}`),
              nonce: "empty",
              nack: false,
              typeUrl: SECRET_TYPE_URL,
              version: "",
            }
          : step;
        const nonce =
          request.nonce === "current"
            ? lastNonce
            : request.nonce === "empty"
              ? ""
              : request.nonce === "stale" && nonces.length > 1
                ? (nonces[0] as string)
                : garbageNonce;
        call.write({
          node: { id: "sidecar~10.0.0.1~bookstore-v2~bookstore.svc.cluster.local", cluster: "bookstore-v2" },
          resource_names: request.names,
          type_url: request.typeUrl,
          version_info: request.version,
          response_nonce: nonce,
          error_detail: request.nack ? { code: 3, message: "rejected" } : null,
        });
        if (request.typeUrl !== "" && request.typeUrl !== SECRET_TYPE_URL) {
          const error = await stream.ended();
          assert.equal(error.code, grpc.status.INVALID_ARGUMENT, error.details);
          return;
        }
        if (nonce !== "" && nonce !== lastNonce) continue; // stale: ignored
        if (request.names.length > MAX_NAMES_PER_STREAM) {
          const error = await stream.ended();
          assert.equal(error.code, grpc.status.INVALID_ARGUMENT, error.details);
          return;
        }
        const changed = nonce === "" || !sameNames(names, request.names);
        if (changed) names = [...request.names];
        if (!changed) continue; // an ACK or a NACK of what it holds: nothing until a change
        if (names.some(known)) expected++;
      }
      if (expected > nonces.length) {
        const response = await stream.next(expected - 1);
        assert.equal(response.type_url, SECRET_TYPE_URL);
        assert.notEqual(response.nonce, "");
        assert.ok(!nonces.includes(response.nonce), "a fresh nonce on every response");
        nonces.push(response.nonce);
        const secrets = decodeSecrets(response);
        for (const secret of secrets) checkSecret(secret);
        assert.deepEqual(new Set(secrets.map((s) => s.name)), new Set(names.filter(known)));
      }
    }
    await sleep(QUIET_MS);
    assert.equal(stream.error, undefined, `stream ended: ${stream.error?.details}`);
    assert.equal(stream.responses.length, expected, "responses beyond what the protocol allows");
  } finally {
    call.cancel();
  }
}

test("StreamSecrets: random request sequences follow the xDS state machine", async () => {
  const heap0 = SOAK ? heapUsedMb() : 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(sotwStepArb, { minLength: 1, maxLength: 12 }),
      fc.string({ minLength: 1, maxLength: 12 }),
      (steps, garbage) => runSotw(steps, `never-${garbage}`),
    ),
    { numRuns: RUNS, ...propertySeed() },
  );
  if (SOAK) console.log(`sds StreamSecrets: heapUsed ${heap0} -> ${heapUsedMb()} MB over ${RUNS} cases`);
  // Cancellations reach the server a moment later; every stream must then be forgotten.
  const deadline = Date.now() + WAIT_MS;
  while (server.streamCount > 0 && Date.now() < deadline) await sleep(10);
  assert.equal(server.streamCount, 0, "every cancelled stream forgotten");
});

// ---- DeltaSecrets (incremental) ----

interface DeltaResponse {
  system_version_info: string;
  resources: { name: string; version: string; resource: { type_url: string; value: Buffer } }[];
  removed_resources: string[];
  nonce: string;
  type_url: string;
}

type DeltaStep =
  | {
      kind: "request";
      subscribe: string[];
      unsubscribe: string[];
      nonce: string;
      nack: boolean;
      typeUrl: string;
      initial: Record<string, string>;
    }
  | { kind: "rotate" };

const deltaStepArb: fc.Arbitrary<DeltaStep> = fc.oneof(
  {
    weight: 10,
    arbitrary: fc.record({
      kind: fc.constant("request" as const),
      subscribe: namesArb,
      unsubscribe: fc.array(nameArb, { maxLength: 3 }),
      nonce: fc.oneof(fc.constant(""), fc.string({ maxLength: 6 })),
      nack: fc.boolean(),
      typeUrl: typeUrlArb,
      // Versions Envoy claims to hold from before: never the real ones, so they are re-sent.
      initial: fc.dictionary(
        nameArb,
        fc.string({ maxLength: 6 }).map((v) => `old-${v}`),
        { maxKeys: 3 },
      ),
    }),
  },
  { weight: 3, arbitrary: fc.constant({ kind: "rotate" as const }) },
);

async function runDelta(steps: DeltaStep[]): Promise<void> {
  const call = (client.DeltaSecrets as () => grpc.ClientDuplexStream<object, DeltaResponse>).call(client);
  const stream = new Recorder(call);
  // The model: subscriptions, and which rotation of the certificate the client holds per name
  // (trust-bundle names never change here, so holding one at all is enough).
  const subscribed = new Set<string>();
  const holds = new Map<string, number>();
  let generation = 0;
  let started = false;
  let expected = 0;
  const due = () =>
    [...subscribed].filter((n) => known(n) && holds.get(n) !== (CERT_NAMES.has(n) ? generation : -1));
  try {
    for (const step of steps) {
      let names: string[];
      if (step.kind === "rotate") {
        await rotate();
        generation++;
        names = due();
      } else {
        call.write({
          node: { id: "sidecar~10.0.0.1~bookstore-v2~bookstore.svc.cluster.local" },
          type_url: step.typeUrl,
          resource_names_subscribe: step.subscribe,
          resource_names_unsubscribe: step.unsubscribe,
          initial_resource_versions: started ? {} : step.initial,
          response_nonce: step.nonce,
          error_detail: step.nack ? { code: 3, message: "rejected" } : null,
        });
        if (step.typeUrl !== "" && step.typeUrl !== SECRET_TYPE_URL) {
          const error = await stream.ended();
          assert.equal(error.code, grpc.status.INVALID_ARGUMENT, error.details);
          return;
        }
        // A subscription after the first request always gets the resource again.
        if (started) for (const n of step.subscribe) holds.delete(n);
        started = true;
        for (const n of step.unsubscribe) {
          subscribed.delete(n);
          holds.delete(n);
        }
        for (const n of step.subscribe) subscribed.add(n);
        names = due();
      }
      if (names.length === 0) continue;
      expected++;
      const response = await stream.next(expected - 1);
      assert.equal(response.type_url, SECRET_TYPE_URL);
      assert.deepEqual(response.removed_resources, []);
      assert.deepEqual(new Set(response.resources.map((r) => r.name)), new Set(names));
      for (const r of response.resources) {
        const [secret] = decodeSecrets({
          version_info: "",
          nonce: "",
          type_url: SECRET_TYPE_URL,
          resources: [r.resource],
        });
        checkSecret(secret as DecodedSecret);
        holds.set(r.name, CERT_NAMES.has(r.name) ? generation : -1);
      }
    }
    await sleep(QUIET_MS);
    assert.equal(stream.error, undefined, `stream ended: ${stream.error?.details}`);
    assert.equal(stream.responses.length, expected, "responses beyond what the protocol allows");
  } finally {
    call.cancel();
  }
}

test("DeltaSecrets: random (un)subscription sequences send exactly what Envoy lacks", async () => {
  const heap0 = SOAK ? heapUsedMb() : 0;
  await fc.assert(
    fc.asyncProperty(fc.array(deltaStepArb, { minLength: 1, maxLength: 12 }), (steps) => runDelta(steps)),
    { numRuns: RUNS, ...propertySeed() },
  );
  if (SOAK) console.log(`sds DeltaSecrets: heapUsed ${heap0} -> ${heapUsedMb()} MB over ${RUNS} cases`);
});
