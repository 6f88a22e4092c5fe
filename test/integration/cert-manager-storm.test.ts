// Issue 8's storm, with real processes: the fake API server (its cert-manager signs with the CA
// issuer's own key pair, Secret osm-ca-key-pair), one `osm-cert server --certificate-manager
// cert-manager`, AGENTS real agents authenticated by xDS bootstrap certificates, and — because 500
// agent processes do not fit on this machine — a driver that sends CSRS agent-shaped CSRs at once,
// each identity on its own TLS connection with its own bootstrap certificate, retrying as agents
// do. All get certificates chaining to ca.crt; the CertificateRequests that existed at once (as
// the fake API server counted them) never exceeded --cert-manager-max-in-flight; none is left.
// Then the server's own serving certificate, issued through cert-manager for a minute, is renewed
// before it expires.
//
// STORM_N and STORM_AGENTS change the sizes (defaults 500 and 20).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect } from "node:tls";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { makeIdentity } from "../../common/identity.js";
import { privateKeyToPem } from "../../common/keys.js";
import { backoffDelay } from "../../common/lifecycle.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { bootstrapCert, openTestCa, serviceCsrPem, tempDir } from "../helpers/pki.js";
import {
  CliProcess,
  issueBootstrapDir,
  startBootstrapAgent,
  startServerProcess,
} from "../helpers/processes.js";
import { TestSigningClient } from "../helpers/signing-client.js";

const FAKE = fileURLToPath(new URL("../fakes/kube-apiserver-process.js", import.meta.url));
const NS = "osm-system";
const MAX_IN_FLIGHT = Number(process.env.STORM_BOUND ?? 32);
const CSRS = Number(process.env.STORM_N ?? 500);
const AGENTS = Number(process.env.STORM_AGENTS ?? 20);
const RETRYABLE = new Set(["RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"]);
const b64 = (text: string) => Buffer.from(text).toString("base64");

describe(`cert-manager storm: ${AGENTS} agent processes and ${CSRS} agent-shaped CSRs at once`, () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let ca: TresorProvider;
  let caPem: string;
  let fake: CliProcess;
  let control: string;
  let server: CliProcess;
  let address: string;
  let serverStarted: number;

  const call = async (method: string, path: string, body?: unknown): Promise<unknown> =>
    (
      await fetch(`${control}${path}`, {
        method,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      })
    ).json();
  const stats = async () =>
    (await call("GET", "/cert-manager/stats")) as { live: number; maxLive: number; created: number };
  const requestsLeft = async () =>
    (await call("GET", `/objects?resource=certificaterequests&namespace=${NS}`)) as unknown[];

  before(async () => {
    dir = await tempDir();
    const caDir = join(dir.path, "issuer-ca");
    // The operator's CA: cert-manager's CA issuer signs with it (Secret osm-ca-key-pair), and
    // ca.crt of osm-ca-bundle is its certificate.
    ca = await openTestCa(caDir);
    caPem = ca.trustBundle().roots[0] as string;
    const kubeconfig = join(dir.path, "kubeconfig.json");
    fake = new CliProcess(
      spawn(process.execPath, [FAKE, kubeconfig, "storm"], { stdio: ["ignore", "pipe", "pipe"] }),
      "fake-apiserver",
    );
    control = (await fake.waitForEvent("fake.started")).control as string;
    const seed = (resource: string, object: unknown) => call("POST", "/seed", { resource, object });
    await seed("secrets", {
      metadata: { name: "osm-ca-key-pair", namespace: NS },
      type: "kubernetes.io/tls",
      data: { "tls.crt": b64(caPem), "tls.key": b64(privateKeyToPem(ca.ca.privateKey)) },
    });
    await seed("issuers", {
      metadata: { name: "osm-ca", namespace: NS },
      spec: { ca: { secretName: "osm-ca-key-pair" } },
    });
    await seed("secrets", {
      metadata: { name: "osm-ca-bundle", namespace: NS },
      data: { "ca.crt": b64(caPem) },
    });
    serverStarted = Date.now();
    ({ server, address } = await startServerProcess(null, [
      "--kubeconfig",
      kubeconfig,
      "--certificate-manager",
      "cert-manager",
      "--trust-bundle-configmap-name",
      "",
      "--cert-manager-max-in-flight",
      String(MAX_IN_FLIGHT),
      // Renewed at two thirds: within this file's run.
      "--serving-cert-validity",
      "1m",
    ]));
  });

  after(async () => {
    await server?.stop();
    await fake?.stop();
    await dir?.remove();
  });

  test(`all get certificates chaining to ca.crt; never more than ${MAX_IN_FLIGHT} CertificateRequests at once; none left`, async () => {
    // Agents' bootstrap directories: the first as the README says for this mode — the CA issuer's
    // Secret (tls.crt, tls.key, and the expiry as `openssl x509 -enddate` prints it) in a --ca-dir for
    // `osm-cert issue bootstrap` — the rest signed the same way in-process (the CLI costs a second each).
    const fromSecret = join(dir.path, "from-secret");
    await mkdir(fromSecret);
    await writeFile(join(fromSecret, "ca.crt"), caPem);
    await writeFile(join(fromSecret, "private.key"), privateKeyToPem(ca.ca.privateKey));
    await writeFile(join(fromSecret, "expiration"), `${new X509Certificate(caPem).validTo}\n`);
    const agentDirs = await Promise.all(
      Array.from({ length: AGENTS }, async (_, i) => {
        const out = join(dir.path, `agent-${i}`);
        if (i === 0) return issueBootstrapDir(fromSecret, out, "storm", "agent-0");
        const cert = await bootstrapCert(ca, makeIdentity(`agent-${i}`, "storm"));
        await mkdir(out, { recursive: true });
        await writeFile(join(out, "tls.crt"), cert.certPem);
        await writeFile(join(out, "tls.key"), cert.keyPem);
        await writeFile(join(out, "ca.crt"), caPem);
        return out;
      }),
    );
    // The driver's identities: each its own bootstrap certificate, CSR and TLS connection.
    const drivers = await Promise.all(
      Array.from({ length: CSRS }, async (_, i) => {
        const sa = `sa-${i}`;
        const [cert, csr] = await Promise.all([
          bootstrapCert(ca, makeIdentity(sa, "storm")),
          serviceCsrPem(sa, "storm"),
        ]);
        return { sa, csr, client: new TestSigningClient(address, caPem, cert) };
      }),
    );
    await call("POST", "/cert-manager/reset", {});
    const before = await stats();
    const retries: Record<string, number> = {};
    let hinted = 0;
    const agents: CliProcess[] = [];
    const started = Date.now();
    try {
      for (let i = 0; i < AGENTS; i++) {
        agents.push(
          startBootstrapAgent({
            server: address,
            bootstrapDir: agentDirs[i] as string,
            namespace: "storm",
            serviceAccount: `agent-${i}`,
            socket: join(dir.path, `agent-${i}.sock`),
            name: `agent-${i}`,
          }),
        );
      }
      const driven = Promise.all(
        drivers.map(async ({ csr, client }) => {
          for (let attempt = 0; ; attempt++) {
            try {
              // The agent's own deadline for a signing call (agent/rotator.ts).
              return await client.create(csr, 0, undefined, 15_000);
            } catch (error) {
              const e = error as grpc.ServiceError;
              const status = grpc.status[e.code] ?? String(e.code);
              if (!RETRYABLE.has(status)) throw new Error(`${status}: ${e.details}`);
              retries[status] = (retries[status] ?? 0) + 1;
              // As agents do: the server's grpc-retry-pushback-ms when it sends one, else capped
              // exponential backoff; jittered either way.
              const pushback = Number(e.metadata?.get("grpc-retry-pushback-ms")[0] ?? Number.NaN);
              if (Number.isFinite(pushback)) hinted++;
              const wait = Number.isFinite(pushback)
                ? pushback * (0.8 + Math.random() * 0.4)
                : backoffDelay(attempt, 500, 5_000);
              await new Promise((r) => setTimeout(r, wait));
            }
          }
        }),
      );
      const responses = await driven;
      const drivenMs = Date.now() - started;
      await Promise.all(agents.map((a) => a.waitForEvent("certificate.rotated", 60_000)));
      const allMs = Date.now() - started;

      const root = new X509Certificate(caPem);
      responses.forEach((response, i) => {
        const leaf = new X509Certificate(response.certificate_chain[0] as string);
        assert.ok(leaf.verify(root.publicKey), `sa-${i}: chains to ca.crt`);
        assert.match(
          leaf.subjectAltName ?? "",
          new RegExp(`URI:spiffe://cluster\\.local/ns/storm/sa/sa-${i}(,|$)`),
        );
      });
      const after = await stats();
      const events: Record<string, number> = {};
      for (const l of server.lines)
        if (l.level !== 30 && l.event) events[String(l.event)] = (events[String(l.event)] ?? 0) + 1;
      process.stdout.write(`# server warnings by event: ${JSON.stringify(events)}\n`);
      const failures = server.lines.filter((l) => l.event === "cert_manager.failed").slice(0, 3);
      process.stdout.write(`# first failures: ${JSON.stringify(failures.map((l) => l.msg))}\n`);
      const created = after.created - before.created;
      assert.ok(created >= CSRS + AGENTS, `${created} CertificateRequests for ${CSRS + AGENTS} CSRs`);
      assert.ok(after.maxLive <= MAX_IN_FLIGHT, `at most ${after.maxLive} at once, bound ${MAX_IN_FLIGHT}`);
      assert.ok(after.maxLive >= MAX_IN_FLIGHT / 2, `the bound was used (max ${after.maxLive} at once)`);
      assert.deepEqual(await requestsLeft(), [], "no CertificateRequest left behind");
      process.stdout.write(
        `# storm: ${CSRS} CSRs over ${CSRS} connections in ${drivenMs} ms; with ${AGENTS} agent processes all certified after ${allMs} ms; ` +
          `${created} CertificateRequests, at most ${after.maxLive} at once (bound ${MAX_IN_FLIGHT}); retries ${JSON.stringify(retries)} (${hinted} with a pushback hint)\n`,
      );
    } finally {
      for (const d of drivers) d.client.close();
      await Promise.all(agents.map((a) => a.stop()));
    }
  });

  test("the serving certificate came from cert-manager and is renewed before it expires", async () => {
    const issued = () => server.lines.filter((l) => l.event === "serving_cert.issued");
    assert.ok(issued()[0], "issued at start-up");
    // Renewal is due at two thirds of the minute; allow a loaded machine some slack.
    const deadline = Math.max(serverStarted + 58_000, Date.now() + 5_000);
    while (issued().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    const all = issued();
    assert.ok(all.length >= 2, "renewed");
    for (let i = 1; i < all.length; i++) {
      const previous = all[i - 1] as (typeof all)[0];
      const next = all[i] as (typeof all)[0];
      assert.ok(Number(next.time) < Date.parse(String(previous.notAfter)), `renewal ${i} before expiry`);
      assert.notEqual(next.serial, previous.serial);
    }
    const peer = await new Promise<X509Certificate>((resolve, reject) => {
      const [host, port] = address.split(":") as [string, string];
      const socket = connect({
        host,
        port: Number(port),
        ca: caPem,
        ALPNProtocols: ["h2"],
        servername: "localhost",
      });
      socket.once("secureConnect", () => {
        const cert = socket.getPeerX509Certificate();
        socket.destroy();
        if (cert) resolve(cert);
        else reject(new Error("no peer certificate"));
      });
      socket.once("error", reject);
    });
    // The newest one is installed, and it was signed by the issuer's CA (the server holds no CA key).
    const newest = issued().at(-1) as (typeof all)[0];
    assert.equal(peer.serialNumber.replace(/^0+/, ""), String(newest.serial).replace(/^0+/, ""));
    assert.ok(peer.verify(new X509Certificate(caPem).publicKey), "signed by the issuer's CA");
    assert.deepEqual(await requestsLeft(), []);
  });
});
