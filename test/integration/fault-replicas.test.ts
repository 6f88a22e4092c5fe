// Fault scenarios with two signing-server replicas behind one address (issue 10, Deliver 1): a
// small TCP balancer (test/helpers/tcp-balancer.ts) spreads connections over both replicas, which
// share one CA directory, as a Kubernetes Service spreads them over the Deployment's pods.
// - One replica is SIGKILLed in the middle of a burst of CreateCertificate calls and of agents'
//   renewals: every call ends OK or retryably, every retried issuance succeeds on the survivor
//   (none lost, none hangs), and every agent keeps serving valid certificates and renews through it.
// - Agents whose clocks run 5 minutes ahead of and behind the servers' (libfaketime) still get and
//   serve certificates.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CheckingEnvoy } from "../helpers/checking-envoy.js";
import { serviceCsrPem, tempDir } from "../helpers/pki.js";
import {
  CLI,
  CliProcess,
  issueBootstrapDir,
  startBootstrapAgent,
  startServerProcess,
} from "../helpers/processes.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";
import { TcpBalancer } from "../helpers/tcp-balancer.js";

const RETRYABLE = new Set(["UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"]);
const BURST = 120;
const CLIENTS = 4;
const AGENTS = 4;

let dir: Awaited<ReturnType<typeof tempDir>>;
let caDir: string;
let bootDir: string;
let rootPem: string;
let replicas: CliProcess[] = [];
let balancer: TcpBalancer;

before(async () => {
  dir = await tempDir();
  caDir = join(dir.path, "ca");
  // `issue bootstrap` creates the CA directory; both replicas then load the same root.
  bootDir = await issueBootstrapDir(caDir, join(dir.path, "boot"), "bookstore", "bookstore-v2");
  rootPem = await readFile(join(bootDir, "ca.crt"), "utf8");
  const started = await Promise.all([startServerProcess(caDir), startServerProcess(caDir)]);
  replicas = started.map((s) => s.server);
  balancer = await TcpBalancer.start(started.map((s) => s.address));
});

after(async () => {
  await balancer?.close();
  await Promise.all(replicas.map((r) => r.stop("SIGKILL")));
  await dir?.remove();
});

function issuedBy(replica: CliProcess): number {
  return replica.lines.filter((l) => l.event === "certificate.issued").length;
}

/** One issuance as an agent makes it: retried on a retryable status, up to `attempts` times. */
async function issueWithRetry(client: TestSigningClient, csr: string, attempts = 5) {
  const seen: string[] = [];
  for (let i = 0; i < attempts; i++) {
    try {
      const response = await client.create(csr);
      return { ok: true, seen, response };
    } catch (error) {
      const { status } = await statusOf(Promise.reject(error));
      seen.push(status);
      if (!RETRYABLE.has(status)) return { ok: false, seen };
      await sleep(200 * 2 ** i);
    }
  }
  return { ok: false, seen };
}

test(`one of two replicas SIGKILLed mid-burst (${BURST} calls over ${CLIENTS} connections, ${AGENTS} agents renewing): failover, nothing lost`, async (t) => {
  const boot = {
    certPem: await readFile(join(bootDir, "tls.crt"), "utf8"),
    keyPem: await readFile(join(bootDir, "tls.key"), "utf8"),
  };
  const agents = Array.from({ length: AGENTS }, (_, i) =>
    startBootstrapAgent({
      server: balancer.address,
      bootstrapDir: bootDir,
      namespace: "bookstore",
      serviceAccount: "bookstore-v2",
      socket: join(dir.path, `failover-${i}.sock`),
      name: `agent ${i}`,
      extra: ["--cert-validity", "20s", "--rotation-fraction", "0.15"],
    }),
  );
  const envoys: CheckingEnvoy[] = [];
  const clients = Array.from(
    { length: CLIENTS },
    () => new TestSigningClient(balancer.address, rootPem, boot),
  );
  try {
    await Promise.all(agents.map((a) => a.waitForEvent("agent.started")));
    for (let i = 0; i < AGENTS; i++)
      envoys.push(new CheckingEnvoy({ socket: join(dir.path, `failover-${i}.sock`) }));
    // Each client's connection lands on a replica in turn: both replicas carry the burst.
    await Promise.all(clients.map((c) => c.firstBundle()));
    assert.ok(
      balancer.connections.every((n) => n > 0),
      `both replicas took connections: ${balancer.connections}`,
    );
    const csrs = await Promise.all(
      Array.from({ length: BURST }, () => serviceCsrPem("bookstore-v2", "bookstore")),
    );
    const before = replicas.map(issuedBy);
    const burst = csrs.map((csr, i) => issueWithRetry(clients[i % CLIENTS] as TestSigningClient, csr));
    // Kill one replica once the burst is under way.
    const victim = replicas[0] as CliProcess;
    const killAt = (before[0] ?? 0) + 5;
    await victim.waitFor(() => issuedBy(victim) >= killAt, 20_000);
    victim.child.kill("SIGKILL");
    await victim.exited;
    const results = await Promise.all(burst);
    const retried = results.filter((r) => r.seen.length > 0).length;
    t.diagnostic(
      `${results.filter((r) => r.ok).length}/${BURST} issued; ${retried} needed a retry (${[
        ...new Set(results.flatMap((r) => r.seen)),
      ]})`,
    );
    for (const result of results) assert.ok(result.ok, `an issuance was lost: ${result.seen}`);
    // Every certificate returned is one the caller can use: fresh, valid now, chaining to the root.
    for (const result of results) {
      const leaf = new X509Certificate(result.response?.certificate_chain[0] as string);
      assert.ok(Date.parse(leaf.validTo) > Date.now());
      assert.ok(leaf.verify(new X509Certificate(rootPem).publicKey));
    }
    assert.ok(retried > 0, "the kill cut calls in flight (the test must exercise failover)");

    // Agents renew through the survivor: each gets a certificate issued after the kill.
    const killedAt = Date.now();
    const renewed = await Promise.all(
      envoys.map(async (e) => {
        const deadline = Date.now() + 25_000;
        while (Date.now() < deadline) {
          if (e.held.some((h) => h.receivedAt > killedAt)) return true;
          await sleep(100);
        }
        return false;
      }),
    );
    assert.deepEqual(renewed, Array(AGENTS).fill(true), "every agent renewed after the kill");
    for (const e of envoys) assert.deepEqual(e.violations, []);
  } finally {
    for (const c of clients) c.close();
    await Promise.all(envoys.map((e) => e.close()));
    await Promise.all(agents.map((a) => a.stop("SIGKILL")));
    // Bring the killed replica back for the next test.
    const again = await startServerProcess(caDir);
    replicas[0] = again.server;
    balancer.replace(0, again.address);
  }
});

/** Debian's libfaketime (package libfaketime, installed by .ci/run), under the machine's multiarch directory. */
function libfaketime(): string {
  for (const arch of readdirSync("/usr/lib")) {
    const path = join("/usr/lib", arch, "faketime", "libfaketime.so.1");
    if (existsSync(path)) return path;
  }
  throw new Error("libfaketime.so.1 not found under /usr/lib/*/faketime (apt-get install faketime)");
}

/** An agent whose clock is `offset` ("+5m", "-5m") off, through libfaketime. */
function skewedAgent(offset: string, socket: string): CliProcess {
  const args = [
    "agent",
    "--server",
    balancer.address,
    "--ca-bundle",
    join(bootDir, "ca.crt"),
    "--namespace",
    "bookstore",
    "--service-account",
    "bookstore-v2",
    "--bootstrap-cert",
    join(bootDir, "tls.crt"),
    "--bootstrap-key",
    join(bootDir, "tls.key"),
    "--sds-socket",
    socket,
    "--admin-listen",
    "127.0.0.1:0",
    "--cert-validity",
    "1h",
  ];
  // libfaketime preloaded into node itself, not through the `faketime` wrapper: the wrapper forks, so
  // stopping it would orphan the agent (seen: two agents left running after every test run).
  const child = spawn(process.execPath, [CLI, ...args], {
    env: {
      ...process.env,
      LD_PRELOAD: libfaketime(),
      FAKETIME: offset,
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new CliProcess(child, `agent ${offset}`);
}

for (const [offset, offsetMs] of [
  ["+5m", 300_000],
  ["-5m", -300_000],
] as const) {
  test(`an agent whose clock is ${offset} off the servers' gets and serves a certificate`, async () => {
    const socket = join(dir.path, `skew${offsetMs}.sock`);
    const agent = skewedAgent(offset, socket);
    let envoy: CheckingEnvoy | undefined;
    try {
      const started = await agent.waitForEvent("agent.started");
      // The agent's own clock is the faked one (libfaketime works on node).
      const at = typeof started.time === "number" ? started.time : Date.parse(String(started.time));
      const skew = at - Date.now();
      assert.ok(Math.abs(skew - offsetMs) < 30_000, `agent clock off by ${skew} ms`);
      // Checked at the agent's time: what it hands Envoy must be valid by its own clock...
      envoy = new CheckingEnvoy({ socket, clockOffsetMs: offsetMs });
      const deadline = Date.now() + 20_000;
      while (envoy.current === undefined && Date.now() < deadline) await sleep(50);
      const held = envoy.current;
      assert.ok(
        held !== undefined,
        `no certificate served within 20 s: ${JSON.stringify(agent.lines.filter((l) => l.level !== undefined && l.level >= 40).slice(-2))}`,
      );
      assert.deepEqual(envoy.violations, []);
      // ... and by the peers' (the servers') clock, which checks it in mTLS handshakes.
      assert.ok(held.notBefore <= Date.now() && Date.now() < held.notAfter);
      const admin = String(started.admin);
      const ready = await fetch(`http://${admin}/readyz`);
      assert.equal(ready.status, 200, await ready.text());
    } finally {
      await envoy?.close();
      await agent.stop("SIGKILL");
    }
  });
}
