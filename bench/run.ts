// Benchmarks (not tests): `npm run bench`. Every figure is reported next to a reference measured in
// the same run on the same machine, because this machine is shared and absolute numbers drift.
//
//   signing   CSRs signed per second by one server process over gRPC+TLS, vs `openssl speed ecdsap256`
//   agent     agent RSS after start and time to first secret, vs a bare `node` process

import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { makeIdentity, serviceCommonName, spiffeId } from "../common/identity.js";
import { generateKeyPair } from "../common/keys.js";
import { encodePem } from "../common/pem.js";
import { createCsr, parseCsrDer } from "../common/x509/csr.js";
import { connectSds, SdsStream } from "../test/helpers/envoy-sds-client.js";
import { bootstrapCert, openTestCa, tempDir } from "../test/helpers/pki.js";
import { CLI, runCli, startCli, startServerProcess } from "../test/helpers/processes.js";
import { TestSigningClient } from "../test/helpers/signing-client.js";

const { values } = parseArgs({
  options: { only: { type: "string" }, seconds: { type: "string", default: "5" } },
});
const SECONDS = Number(values.seconds);
const identity = makeIdentity("bench", "bench");
const CN = serviceCommonName(identity, "cluster.local");
const SPIFFE = spiffeId(identity, "cluster.local");

/** openssl's own sign and verify rates for ECDSA P-256 on one core, and the per-CSR floor they imply. */
function opensslFloor(): { sign: number; verify: number; floor: number } {
  const out = execFileSync("openssl", ["speed", "-seconds", "3", "ecdsap256"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  });
  const row = /256 bits ecdsa \(nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+([\d.]+)/.exec(out);
  if (row === null) throw new Error(`cannot read openssl speed output:\n${out}`);
  const sign = Number(row[1]);
  const verify = Number(row[2]);
  return { sign, verify, floor: 1 / (1 / sign + 1 / verify) };
}

function makeCsrs(count: number): string[] {
  const csrs: string[] = [];
  for (let i = 0; i < count; i++) {
    const { privateKey } = generateKeyPair("ecdsa-p256");
    csrs.push(
      encodePem(
        "CERTIFICATE REQUEST",
        createCsr({ privateKey, commonName: CN, dnsNames: [CN], uris: [SPIFFE] }),
      ),
    );
  }
  return csrs;
}

async function benchSigning(): Promise<void> {
  const dir = await tempDir("osm-cert-bench-");
  try {
    const caDir = join(dir.path, "ca");
    const ca = await openTestCa(caDir);
    const root = ca.trustBundle().roots.join("");
    const csrs = makeCsrs(2_000);

    // In-process core (no gRPC): parse + verify + build + sign, one core.
    const { TresorProvider } = await import("../server/providers/tresor/tresor.js");
    if (!(ca instanceof TresorProvider)) throw new Error("unexpected provider");
    const ders = csrs.map((pem) => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ""), "base64"));
    let core = 0;
    const coreStart = performance.now();
    while (performance.now() - coreStart < 2_000) {
      const der = ders[core % ders.length] as Buffer;
      ca.issueSync({
        csrPem: "",
        csr: parseCsrDer(der),
        profile: "service",
        commonName: CN,
        dnsNames: [CN],
        uris: [SPIFFE],
        ipAddresses: [],
        validityMs: 3_600_000,
      });
      core++;
    }
    const coreRate = core / ((performance.now() - coreStart) / 1000);

    // Over gRPC+TLS against one server process; the load generator runs in this process.
    const { server, address } = await startServerProcess(caDir, []);
    const clients = Array.from(
      { length: 4 },
      () => new TestSigningClient(address, root, bootstrapCert(ca, identity)),
    );
    let done = 0;
    let errors = 0;
    const inflightPerClient = 16;
    const end = performance.now() + SECONDS * 1000;
    const warmup = performance.now() + 1000;
    let measuredFrom = 0;
    let measuredCount = 0;
    await Promise.all(
      clients.flatMap((client) =>
        Array.from({ length: inflightPerClient }, async (_, i) => {
          let n = i;
          while (performance.now() < end) {
            try {
              await client.create(csrs[n++ % csrs.length] as string);
              done++;
              if (performance.now() >= warmup) {
                if (measuredFrom === 0) measuredFrom = performance.now();
                measuredCount++;
              }
            } catch {
              errors++;
            }
          }
        }),
      ),
    );
    const grpcRate = measuredCount / ((performance.now() - measuredFrom) / 1000);
    const rss =
      Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.child.pid}/status`, "utf8"))?.[1]) / 1024;
    for (const c of clients) c.close();
    await server.stop();

    const floor = opensslFloor();
    console.log("## signing (ECDSA P-256, one server process)");
    console.log(
      `openssl speed ecdsap256: sign ${floor.sign.toFixed(0)}/s, verify ${floor.verify.toFixed(0)}/s -> floor ${floor.floor.toFixed(0)} CSRs/s (one verify + one sign)`,
    );
    console.log(
      `in-process parse+verify+build+sign: ${coreRate.toFixed(0)}/s = ${((coreRate / floor.floor) * 100).toFixed(0)} % of the floor`,
    );
    console.log(
      `gRPC+TLS CreateCertificate: ${grpcRate.toFixed(0)}/s = ${((grpcRate / floor.floor) * 100).toFixed(0)} % of the floor (${done} done, ${errors} errors, server RSS ${rss.toFixed(0)} MB)`,
    );
  } finally {
    await dir.remove();
  }
}

function rssOf(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
}

async function bareNode(): Promise<{ rss: number; startMs: number }> {
  const t0 = performance.now();
  execFileSync(process.execPath, ["-e", "0"]);
  const startMs = performance.now() - t0;
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 500));
  const rss = rssOf(child.pid as number);
  child.kill();
  return { rss, startMs };
}

async function benchAgent(): Promise<void> {
  const dir = await tempDir("osm-cert-bench-");
  try {
    const caDir = join(dir.path, "ca");
    const { server, address } = await startServerProcess(caDir);
    const out = join(dir.path, "boot");
    await runCli([
      "issue",
      "bootstrap",
      "--namespace",
      "bench",
      "--service-account",
      "bench",
      "--ca-dir",
      caDir,
      "--out",
      out,
    ]);
    const socket = join(dir.path, "sds.sock");
    const t0 = performance.now();
    const agent = startCli("agent", [
      "agent",
      "--server",
      address,
      "--ca-bundle",
      join(out, "ca.crt"),
      "--namespace",
      "bench",
      "--service-account",
      "bench",
      "--bootstrap-cert",
      join(out, "tls.crt"),
      "--bootstrap-key",
      join(out, "tls.key"),
      "--sds-socket",
      socket,
      "--admin-listen",
      "127.0.0.1:0",
    ]);
    await agent.waitForEvent("certificate.rotated", 30_000);
    const stream = new SdsStream(connectSds(socket));
    stream.request(["default", "ROOTCA"]);
    await stream.next(0, 10_000);
    const firstSecretMs = performance.now() - t0;
    stream.end();
    await new Promise((r) => setTimeout(r, 1000));
    const agentRss = rssOf(agent.child.pid as number);
    await agent.stop();
    await server.stop();
    const bare = await bareNode();
    console.log("## agent footprint");
    console.log(`bare node: RSS ${bare.rss.toFixed(1)} MB, \`node -e 0\` ${bare.startMs.toFixed(0)} ms`);
    console.log(
      `agent after first cert: RSS ${agentRss.toFixed(1)} MB = ${(agentRss / bare.rss).toFixed(2)} x bare node`,
    );
    console.log(
      `agent start -> first secret over SDS: ${firstSecretMs.toFixed(0)} ms = ${(firstSecretMs / bare.startMs).toFixed(1)} x \`node -e 0\` (includes key generation, CSR and one signing round trip)`,
    );
  } finally {
    await dir.remove();
  }
}

console.log(`osm-cert benchmarks, node ${process.version}, CLI ${CLI}`);
if (values.only === undefined || values.only === "signing") await benchSigning();
if (values.only === undefined || values.only === "agent") await benchAgent();
