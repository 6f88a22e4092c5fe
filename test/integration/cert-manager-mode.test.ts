// cert-manager mode with real processes: the fake API server (with its cert-manager signer), an
// `osm-cert server --certificate-manager cert-manager`, token-authenticated agents and many
// token-authenticated gRPC clients. Every test ends by listing CertificateRequests: none is left.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, createServer, type TLSSocket } from "node:tls";
import { fileURLToPath } from "node:url";
import { backoffDelay } from "../../common/lifecycle.js";
import { KubeClient, loadKubeconfig, SECRETS, type Secret } from "../../server/kubernetes/client.js";
import { connectSds, decodeSecrets, SdsStream } from "../helpers/envoy-sds-client.js";
import { openTestCa, serviceCsrPem, tempDir } from "../helpers/pki.js";
import { CliProcess, runCli, startCli, startServerProcess } from "../helpers/processes.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";

const FAKE = fileURLToPath(new URL("../fakes/kube-apiserver-process.js", import.meta.url));
const NS = "osm-system";
const MAX_IN_FLIGHT = 8;
const RETRYABLE = ["RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"];

type Json = Record<string, unknown>;

/** A fake API server process with cert-manager installed, an osm-ca Issuer, and its control API. */
async function startFake(dir: string, seedIssuer = true) {
  const kubeconfig = join(dir, `kubeconfig-${Math.random().toString(36).slice(2)}.json`);
  const process_ = new CliProcess(
    spawn(process.execPath, [FAKE, kubeconfig, "bookstore", "bookbuyer", "storm"], {
      stdio: ["ignore", "pipe", "pipe"],
    }),
    "fake-apiserver",
  );
  const control = (await process_.waitForEvent("fake.started")).control as string;
  const call = async (method: string, path: string, body?: unknown): Promise<unknown> =>
    (
      await fetch(`${control}${path}`, {
        method,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })
    ).json();
  const caPem = ((await call("GET", "/cert-manager/ca")) as { caPem: string }).caPem;
  const fake = {
    process: process_,
    kubeconfig,
    caPem,
    call,
    token: async (namespace: string, serviceAccount: string) =>
      ((await call("POST", "/token", { namespace, serviceAccount })) as { token: string }).token,
    seed: (resource: string, object: Json) => call("POST", "/seed", { resource, object }),
    behave: (behaviour: Json, commonName?: string) =>
      call("POST", "/cert-manager/behave", { behaviour, ...(commonName ? { commonName } : {}) }),
    requests: async () =>
      (await call("GET", `/objects?resource=certificaterequests&namespace=${NS}`)) as Json[],
    stats: async () =>
      (await call("GET", "/cert-manager/stats")) as { live: number; maxLive: number; created: number },
    caSecret: (pem: string) =>
      call("POST", "/seed", {
        resource: "secrets",
        object: {
          metadata: { name: "osm-ca-bundle", namespace: NS },
          data: { "ca.crt": Buffer.from(pem).toString("base64") },
        },
      }),
  };
  if (seedIssuer) {
    await fake.seed("issuers", {
      metadata: { name: "osm-ca", namespace: NS },
      spec: { ca: { secretName: "osm-ca-key-pair" } },
    });
  }
  return fake;
}

const SERVER_FLAGS = (kubeconfig: string, extra: string[] = []) => [
  "--kubeconfig",
  kubeconfig,
  "--certificate-manager",
  "cert-manager",
  "--trust-bundle-configmap-name",
  "",
  "--cert-manager-max-in-flight",
  String(MAX_IN_FLIGHT),
  "--cert-manager-request-timeout",
  "6s",
  ...extra,
];

function csrFor(sa: string, ns: string): Promise<string> {
  return serviceCsrPem(sa, ns);
}

describe("cert-manager mode: server, agents and the fake's signer as processes", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let fake: Awaited<ReturnType<typeof startFake>>;
  let server: CliProcess;
  let address: string;

  before(async () => {
    dir = await tempDir();
    fake = await startFake(dir.path);
    await fake.caSecret(fake.caPem);
    // A leftover of an earlier life of this replica (same instance label): the start-up sweep removes it.
    await fake.seed("certificaterequests", {
      metadata: {
        name: "osm-cert-leftover",
        namespace: NS,
        labels: { "app.kubernetes.io/managed-by": "osm-cert", "osm-cert.io/instance": hostname() },
      },
      spec: {
        request: Buffer.from(await csrFor("old", "bookstore")).toString("base64"),
        issuerRef: { name: "nobody" },
      },
    });
    // Someone else's request is never touched.
    await fake.seed("certificaterequests", {
      metadata: { name: "not-ours", namespace: NS },
      spec: {
        request: Buffer.from(await csrFor("x", "bookstore")).toString("base64"),
        issuerRef: { name: "nobody" },
      },
    });
    ({ server, address } = await startServerProcess(null, SERVER_FLAGS(fake.kubeconfig)));
  });

  after(async () => {
    await server?.stop();
    await fake?.process.stop();
    await dir?.remove();
  });

  const ours = async () =>
    (await fake.requests()).filter((cr) => (cr.metadata as { name: string }).name !== "not-ours");

  test("start-up swept our leftover request, kept others', and the serving certificate came through cert-manager", async () => {
    assert.ok(server.lines.some((l) => l.event === "cert_manager.swept" && l.deleted === 1));
    assert.deepEqual(
      (await fake.requests()).map((cr) => (cr.metadata as { name: string }).name),
      ["not-ours"],
    );
    // The serving certificate chains to ca.crt: a client trusting only it connects.
    const client = new TestSigningClient(
      address,
      fake.caPem,
      undefined,
      await fake.token("bookstore", "bookstore"),
    );
    try {
      const bundle = await client.firstBundle();
      assert.deepEqual(bundle.root_certificates, [fake.caPem]);
    } finally {
      client.close();
    }
    const requests = (await fake.call("GET", "/requests")) as {
      verb?: string;
      resource?: string;
      path: string;
    }[];
    const crCalls = requests.filter((r) => r.resource === "certificaterequests");
    // One label-selected watch for the replica (its own requests: managed-by and its instance), no
    // watch per request, and nothing polls.
    const watches = crCalls.filter((r) => r.verb === "watch");
    assert.equal(watches.length, 1, JSON.stringify(watches));
    const query = new URL(`https://x${watches[0]?.path}`).searchParams;
    assert.equal(
      query.get("labelSelector"),
      `app.kubernetes.io/managed-by=osm-cert,osm-cert.io/instance=${hostname()}`,
    );
    assert.equal(query.get("allowWatchBookmarks"), "true");
    assert.ok(query.get("resourceVersion"), "from the list's resourceVersion");
    assert.equal(query.get("fieldSelector"), null);
    assert.equal(crCalls.filter((r) => r.verb === "get").length, 0, "no polling");
  });

  test("two agents get certificates through CertificateRequests that chain to ca.crt and complete an mTLS handshake", async () => {
    await writeFile(join(dir.path, "root.pem"), fake.caPem);
    const agents: CliProcess[] = [];
    const sockets: string[] = [];
    try {
      for (const [ns, sa] of [
        ["bookstore", "bookstore"],
        ["bookbuyer", "bookbuyer"],
      ] as const) {
        const tokenFile = join(dir.path, `${sa}.token`);
        await writeFile(tokenFile, await fake.token(ns, sa));
        const socket = join(dir.path, `${sa}.sock`);
        sockets.push(socket);
        const agent = startCli(`agent ${sa}`, [
          "agent",
          "--server",
          address,
          "--ca-bundle",
          join(dir.path, "root.pem"),
          "--namespace",
          ns,
          "--service-account",
          sa,
          "--token-file",
          tokenFile,
          "--sds-socket",
          socket,
          "--admin-listen",
          "127.0.0.1:0",
        ]);
        agents.push(agent);
      }
      await Promise.all(agents.map((a) => a.waitForEvent("certificate.rotated", 20_000)));
      const served = await Promise.all(
        sockets.map(async (socket) => {
          const stream = new SdsStream(connectSds(socket));
          stream.request(["default", "ROOTCA"]);
          const response = await stream.next(0, 10_000);
          stream.end();
          assert.ok(response);
          const secrets = new Map(decodeSecrets(response).map((s) => [s.name, s]));
          return {
            chain: secrets.get("default")?.certificateChain as string,
            key: secrets.get("default")?.privateKey as string,
            ca: secrets.get("ROOTCA")?.trustedCa as string,
          };
        }),
      );
      const root = new X509Certificate(fake.caPem);
      for (const s of served) {
        assert.equal(new X509Certificate(s.ca).fingerprint256, root.fingerprint256, "ROOTCA is ca.crt");
        assert.ok(new X509Certificate(s.chain).verify(root.publicKey), "leaf chains to ca.crt");
      }
      const [store, buyer] = served as [(typeof served)[0], (typeof served)[0]];
      // A real mutual TLS handshake between the two identities, each trusting only ROOTCA.
      const tlsServer = createServer({
        cert: store.chain,
        key: store.key,
        ca: store.ca,
        requestCert: true,
        rejectUnauthorized: true,
      });
      // A handshake the server side refuses ends the test with its reason instead of a wait forever.
      const peer = new Promise<string>((resolve, reject) => {
        tlsServer.once("secureConnection", (socket: TLSSocket) => {
          resolve(socket.getPeerX509Certificate()?.subjectAltName ?? "");
          socket.end();
        });
        tlsServer.once("tlsClientError", reject);
      });
      await new Promise<void>((resolve) => tlsServer.listen(0, "127.0.0.1", resolve));
      const port = (tlsServer.address() as { port: number }).port;
      const clientSide = await new Promise<string>((resolve, reject) => {
        const socket = connect({
          host: "127.0.0.1",
          port,
          cert: buyer.chain,
          key: buyer.key,
          ca: buyer.ca,
          checkServerIdentity: () => undefined, // identity is the SPIFFE URI, checked below
        });
        socket.once("secureConnect", () => {
          resolve(socket.getPeerX509Certificate()?.subjectAltName ?? "");
          socket.end();
        });
        socket.once("error", reject);
      });
      assert.match(clientSide, /URI:spiffe:\/\/cluster\.local\/ns\/bookstore\/sa\/bookstore/);
      assert.match(await peer, /URI:spiffe:\/\/cluster\.local\/ns\/bookbuyer\/sa\/bookbuyer/);
      tlsServer.close();
      const audit = server.lines.filter(
        (l) => l.event === "certificate.issued" && l.provider === "cert-manager",
      );
      assert.ok(audit.length >= 2);
    } finally {
      await Promise.all(agents.map((a) => a.stop()));
    }
    assert.deepEqual(await ours(), [], "no CertificateRequest left behind");
  });

  test("deny, fail, invalid and stall each give the documented status with cert-manager's words, logged too", async () => {
    const cases = [
      [
        "denied",
        { mode: "deny", reason: "policy.cert-manager.io", message: "no policy allows bookstore/denied" },
        "PERMISSION_DENIED",
        /denied by policy\.cert-manager\.io: no policy allows bookstore\/denied/,
      ],
      [
        "failed",
        { mode: "fail", message: "the CA key pair is unreadable" },
        "UNAVAILABLE",
        /failed \(Failed\): the CA key pair is unreadable/,
      ],
      [
        "invalid",
        { mode: "invalid", reason: "BadUsages", message: "usages not allowed" },
        "INVALID_ARGUMENT",
        /invalid for the issuer \(BadUsages\): usages not allowed/,
      ],
      ["stalled", { mode: "stall" }, "DEADLINE_EXCEEDED", /not signed within 6s: not approved/],
    ] as const;
    for (const [sa, behaviour, status, message] of cases) {
      await fake.behave(behaviour, `${sa}.bookstore.cluster.local`);
      const client = new TestSigningClient(address, fake.caPem, undefined, await fake.token("bookstore", sa));
      try {
        const result = await statusOf(client.create(await csrFor(sa, "bookstore")));
        assert.equal(result.status, status, `${sa}: ${result.details}`);
        assert.match(result.details, message);
      } finally {
        client.close();
      }
      assert.deepEqual(await ours(), [], `${sa}: no CertificateRequest left behind`);
    }
    const refused = server.lines.filter((l) => l.event === "cert_manager.refused");
    assert.deepEqual(
      refused.map((l) => [l.reason, l.message]),
      [
        ["policy.cert-manager.io", "no policy allows bookstore/denied"],
        ["Failed", "the CA key pair is unreadable"],
        ["BadUsages", "usages not allowed"],
      ],
    );
    assert.ok(server.lines.some((l) => l.event === "cert_manager.failed" && l.reason === "deadline"));
    await fake.call("POST", "/cert-manager/reset", {});
  });

  test("an issuer that appends the root to status.certificate: the root is dropped from the returned chain", async () => {
    await fake.behave({ mode: "approve", includeRootInChain: true }, "withroot.bookstore.cluster.local");
    const client = new TestSigningClient(
      address,
      fake.caPem,
      undefined,
      await fake.token("bookstore", "withroot"),
    );
    try {
      const response = await client.create(await csrFor("withroot", "bookstore"));
      assert.equal(response.certificate_chain.length, 1, "the root is not part of the returned chain");
    } finally {
      client.close();
      await fake.call("POST", "/cert-manager/reset", {});
    }
    assert.deepEqual(await ours(), []);
  });

  test("the trust bundle follows the CA bundle Secret: a change reaches WatchTrustBundle", async () => {
    const other = {
      certPem: (await openTestCa(join(dir.path, "second-root"))).trustBundle().roots[0] as string,
    };
    const client = new TestSigningClient(
      address,
      fake.caPem,
      undefined,
      await fake.token("bookstore", "bookstore"),
    );
    try {
      const bundles = client.watchBundles();
      const first = await bundles.next();
      assert.equal(first.value?.root_certificates.length, 1);
      const secret = ((await fake.call("GET", `/objects?resource=secrets&namespace=${NS}`)) as Json[]).find(
        (s) => (s.metadata as { name: string }).name === "osm-ca-bundle",
      ) as Json;
      // As an operator's kubectl would: a real update through the API.
      const kube = new KubeClient({ config: await loadKubeconfig(fake.kubeconfig) });
      try {
        const both = fake.caPem + other.certPem;
        await kube.update(SECRETS, {
          ...(secret as Secret),
          data: { "ca.crt": Buffer.from(both).toString("base64") },
        });
      } finally {
        await kube.close();
      }
      const second = await bundles.next();
      assert.equal(second.value?.root_certificates.length, 2);
      assert.notEqual(second.value?.version, first.value?.version);
      await bundles.return(undefined);
    } finally {
      client.close();
    }
  });

  // Token-authenticated identities sharing connections (the 500-agent storm with bootstrap
  // certificates and agent processes is cert-manager-storm.test.ts).
  test(`60 CSRs at once, each with its own identity and token over 20 connections: all signed, never more than ${MAX_IN_FLIGHT} requests in flight`, async () => {
    await fake.behave({ mode: "approve", latencyMs: 5 });
    const n = Number(process.env.TOKEN_STORM_N ?? 60);
    const tokens = await Promise.all(Array.from({ length: n }, (_, i) => fake.token("storm", `sa-${i}`)));
    const csrs = await Promise.all(Array.from({ length: n }, (_, i) => csrFor(`sa-${i}`, "storm")));
    const before = await fake.stats();
    // 20 connections (the server allows 16 streams on one), each call with its own identity's token.
    const clients = Array.from({ length: 20 }, () => new TestSigningClient(address, fake.caPem));
    const started = Date.now();
    const retries: Record<string, number> = {};
    try {
      // As agents do: the retryable codes (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE — e.g. a
      // TokenReview that timed out on a loaded machine) are retried after a jittered pause; anything
      // else fails the test. Retries are counted by code and reported.
      const results = await Promise.all(
        tokens.map(async (token, i) => {
          const c = clients[i % clients.length] as TestSigningClient;
          let attempt = 0;
          for (;;) {
            const result = await statusOf(c.create(csrs[i] as string, 0, token));
            if (!RETRYABLE.includes(result.status)) return result;
            retries[result.status] = (retries[result.status] ?? 0) + 1;
            // Capped exponential backoff with jitter, as the agent's rotator retries.
            await new Promise((r) => setTimeout(r, backoffDelay(attempt++, 500, 5_000)));
          }
        }),
      );
      const failed = results.filter((r) => r.status !== "OK");
      assert.deepEqual(failed.slice(0, 3), [], `${failed.length} failed`);
    } finally {
      for (const c of clients) c.close();
    }
    const elapsed = Date.now() - started;
    const stats = await fake.stats();
    // A CSR retried after DEADLINE_EXCEEDED (a loaded machine) makes a new request; each was deleted.
    assert.ok(stats.created - before.created >= n, `${stats.created - before.created} requests`);
    assert.ok(stats.maxLive <= MAX_IN_FLIGHT + 1, `max live ${stats.maxLive}`); // +1: "not-ours"
    assert.ok(stats.maxLive >= 3, `the bound was used (max live ${stats.maxLive})`);
    assert.deepEqual(await ours(), []);
    process.stdout.write(
      `# ${n} CSRs through ${stats.created - before.created} CertificateRequests in ${elapsed} ms, retries ${JSON.stringify(retries)}, max live ${stats.maxLive}\n`,
    );
    await fake.call("POST", "/cert-manager/reset", {});
  });
});

describe("cert-manager mode: refusals at start-up and under load", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  before(async () => {
    dir = await tempDir();
    await mkdir(dir.path, { recursive: true });
  });
  after(async () => dir?.remove());

  const start = (kubeconfig: string | null, extra: string[] = []) =>
    runCli([
      "server",
      "--certificate-manager",
      "cert-manager",
      ...(kubeconfig === null ? [] : ["--kubeconfig", kubeconfig]),
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
      ...extra,
    ]);

  test("no Kubernetes API: exit 2 saying cert-manager needs one", async () => {
    const result = await start(null);
    assert.equal(result.code, 2);
    assert.match(
      result.stderr,
      /cert-manager needs a Kubernetes API \(--kubeconfig, or in-cluster credentials\)/,
    );
  });

  test("missing CRDs, an ACME issuer, a missing Issuer, a missing CA Secret: exit 1 with one line saying what to do", async () => {
    const fake = await startFake(dir.path, false);
    try {
      const expectOneLine = async (pattern: RegExp, extra: string[] = []) => {
        const result = await start(fake.kubeconfig, extra);
        assert.equal(result.code, 1, result.stderr);
        const lines = result.stderr.trim().split("\n");
        assert.equal(lines.length, 1, result.stderr);
        assert.match(lines[0] as string, pattern);
      };
      await fake.call("POST", "/group", { group: "cert-manager.io", installed: false });
      await expectOneLine(
        /cert-manager is not installed in this cluster: the API server does not serve cert-manager\.io\/v1/,
      );
      await fake.call("POST", "/group", { group: "cert-manager.io", installed: true });

      await expectOneLine(/Issuer osm-system\/osm-ca does not exist/);

      await fake.seed("clusterissuers", {
        metadata: { name: "letsencrypt" },
        spec: {
          acme: {
            server: "https://acme-v02.api.letsencrypt.org/directory",
            privateKeySecretRef: { name: "le" },
          },
        },
      });
      await expectOneLine(
        /ClusterIssuer letsencrypt is an ACME issuer: ACME CAs .* cannot sign mesh identities/,
        ["--cert-manager-issuer-kind", "ClusterIssuer", "--cert-manager-issuer-name", "letsencrypt"],
      );

      await fake.seed("issuers", {
        metadata: { name: "osm-ca", namespace: NS },
        spec: { ca: { secretName: "k" } },
      });
      await expectOneLine(
        /Secret osm-system\/osm-ca-bundle .* does not exist; create it: kubectl create secret generic osm-ca-bundle -n osm-system --from-file=ca\.crt=/,
      );
      assert.equal((await fake.requests()).length, 0);
    } finally {
      await fake.process.stop();
    }
  });

  test("past the queue bound: RESOURCE_EXHAUSTED with retry guidance; an issuer not Ready only warns", async () => {
    const fake = await startFake(dir.path);
    await fake.caSecret(fake.caPem);
    // The issuer controller reports the issuer broken: start-up warns and goes on.
    await new Promise((r) => setTimeout(r, 100));
    await fake.call("POST", "/status", {
      resource: "issuers",
      namespace: NS,
      name: "osm-ca",
      status: {
        conditions: [
          { type: "Ready", status: "False", reason: "ErrGetKeyPair", message: "secret not found" },
        ],
      },
    });
    const { server, address } = await startServerProcess(null, [
      ...SERVER_FLAGS(fake.kubeconfig, [
        "--cert-manager-max-in-flight",
        "1",
        "--cert-manager-max-queued",
        "1",
      ]),
    ]);
    try {
      const warned = server.lines.find((l) => l.event === "cert_manager.issuer_not_ready");
      assert.equal(warned?.reason, "ErrGetKeyPair");
      await fake.behave({ mode: "stall" });
      const names = ["a", "b", "c"];
      const csrs = await Promise.all(names.map((sa) => csrFor(sa, "bookstore")));
      const clients = await Promise.all(
        names.map(
          async (sa) =>
            new TestSigningClient(address, fake.caPem, undefined, await fake.token("bookstore", sa)),
        ),
      );
      try {
        // One in flight (stalls until the 6s deadline), one queued (gives up after half of it), one refused at once.
        const results = await Promise.all(clients.map((c, i) => statusOf(c.create(csrs[i] as string))));
        assert.deepEqual(results.map((r) => r.status).sort(), [
          "DEADLINE_EXCEEDED",
          "RESOURCE_EXHAUSTED",
          "RESOURCE_EXHAUSTED",
        ]);
        for (const r of results.filter((x) => x.status === "RESOURCE_EXHAUSTED")) {
          assert.match(r.details, /retry in \d+(\.\d)?s/);
        }
      } finally {
        for (const c of clients) c.close();
      }
      assert.deepEqual(await fake.requests(), [], "no CertificateRequest left behind");
      assert.ok((await fake.stats()).maxLive <= 1);
    } finally {
      await server.stop();
      await fake.process.stop();
    }
  });
});
