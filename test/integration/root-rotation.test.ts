// Issue 9's Done-when, scaled to npm test: two workloads (two real agents against a real server in
// directory mode) make a fresh mTLS handshake every 50 ms, both ways, with exactly the secrets their
// agents serve over SDS, while `osm-cert rotate-root` takes the root through every phase (and is
// SIGKILLed in phase 4 and resumed, then run again to prove it does nothing twice). Then a second
// rotation that times out on a straggler is rolled back before phase 3. Throughout: zero failed
// handshakes; the SDS streams see ROOTCA and default change without reconnecting; at the end
// nobody trusts the first root.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  assertFollowedOnOpenStream,
  fingerprints,
  type Listener,
  type Served,
  servingCertificate,
  startTraffic,
  stopTraffic,
  type Traffic,
  untilNoWorkloadTrusts,
  Workload,
} from "../helpers/mtls-traffic.js";
import { tempDir } from "../helpers/pki.js";
import { type CliProcess, runCli, startCli, startServerProcess } from "../helpers/processes.js";

const SERVICE_VALIDITY = "20s";

describe("root rotation under continuous mTLS traffic (directory mode)", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let caDir: string;
  let server: CliProcess;
  let admin: string;
  const agents: CliProcess[] = [];
  const workloads: Workload[] = [];
  const listeners: Listener[] = [];
  let traffic: Traffic | null = null;
  let firstRoot = "";

  const rotateArgs = () => [
    "rotate-root",
    "--ca-dir",
    caDir,
    "--server",
    admin,
    "--wait-agents",
    "30s",
    "--renew-window",
    "3s",
    "--service-cert-validity-duration",
    SERVICE_VALIDITY,
    "--clock-skew",
    "1s",
    "--follow-lag",
    "2s",
    "--agent-reconnect-grace",
    "3s",
  ];
  const rotate = (args: string[]) => runCli([...rotateArgs(), ...args]);
  const say = (result: { lines: { msg?: string }[] }) => result.lines.map((l) => l.msg ?? "").join("\n");

  before(async () => {
    dir = await tempDir();
    caDir = join(dir.path, "ca");
    ({ server, admin } = await startServerProcess(caDir, [
      "--service-cert-validity-duration",
      SERVICE_VALIDITY,
    ]));
    firstRoot = fingerprints(await readFile(join(caDir, "ca.crt"), "utf8"))[0] as string;
    for (const [ns, sa] of [
      ["bookstore", "bookstore-v2"],
      ["bookbuyer", "bookbuyer"],
    ] as const) {
      const out = join(dir.path, `${sa}-bootstrap`);
      const issued = await runCli([
        "issue",
        "bootstrap",
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--ca-dir",
        caDir,
        "--out",
        out,
      ]);
      assert.equal(issued.code, 0, issued.stderr);
      const socket = join(dir.path, `${sa}.sock`);
      const address = (server.lines.find((l) => l.event === "server.started")?.address as string) ?? "";
      const agent = startCli(`agent ${sa}`, [
        "agent",
        "--server",
        address,
        "--ca-bundle",
        join(out, "ca.crt"),
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--bootstrap-cert",
        join(out, "tls.crt"),
        "--bootstrap-key",
        join(out, "tls.key"),
        "--sds-socket",
        socket,
        "--admin-listen",
        "127.0.0.1:0",
        "--cert-validity",
        SERVICE_VALIDITY,
      ]);
      agents.push(agent);
      await agent.waitForEvent("certificate.rotated");
      workloads.push(new Workload(sa, socket));
    }
    traffic = await startTraffic(workloads, listeners);
  });

  after(async () => {
    await stopTraffic(traffic, workloads, listeners);
    for (const agent of agents) await agent.stop();
    await server?.stop();
    await dir?.remove();
  });

  test("every phase; phase 2 timing out and resumed, rotate-root SIGKILLed in phase 4 and resumed, then a rerun that does nothing: zero failed handshakes", async () => {
    await new Promise((r) => setTimeout(r, 1_000));
    // Phase 1, then phase 2 times out on a replica nobody can reach: exit 1, the straggler named.
    const stalled = await rotate(["--server", "127.0.0.1:1", "--wait-agents", "1s"]);
    assert.equal(stalled.code, 1);
    assert.match(say(stalled), /phase 1\/4 done: generated new root [0-9a-f]{16}/);
    assert.match(stalled.stderr, /stragglers: server 127\.0\.0\.1:1/);

    const address = server.lines.find((l) => l.event === "server.started")?.address as string;
    const published = (await (await fetch(`http://${admin}/status`)).json()) as {
      trustBundle: { roots: unknown[] };
      rotation: { phase: string };
    };
    assert.equal(published.rotation.phase, "published");
    assert.equal(published.trustBundle.roots.length, 2);

    // rotate-root resumes at phase 2, and is SIGKILLed in phase 4.
    const secondRun = startCli("rotate-root", rotateArgs());
    await secondRun.waitFor((l) => (l.msg ?? "").includes("phase 4/4: waiting"), 40_000, "phase 4 wait");
    await secondRun.stop("SIGKILL");
    const secondSaid = secondRun.lines.map((l) => l.msg ?? "").join("\n");
    assert.match(secondSaid, /resuming the rotation at phase published/);
    assert.match(secondSaid, /phase 2\/4: 2 agent\(s\) on bundle [0-9a-f]{16}, 0 not yet/);
    assert.match(secondSaid, /phase 3\/4: all 1 server\(s\) sign with the new root/);
    const status = await runCli(["rotate-root", "--ca-dir", caDir, "--status", "--server", admin]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(say(status), /phase: signing-new/);
    assert.match(say(status), /root old: [0-9a-f]{64} expires .* \(in bundle\)/);
    assert.match(say(status), /root new: [0-9a-f]{64} expires .* \(signing, in bundle\)/);

    const resumed = await rotate([]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(say(resumed), /resuming the rotation at phase signing-new/);
    assert.match(say(resumed), /rotation complete/);

    const again = await rotate([]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(say(again), /already complete .*nothing to do/);

    // The server followed: its bundle holds only the new root, which also signs its serving cert.
    await server.waitFor(
      (l) => l.event === "root.switched" && l.phase === "complete",
      10_000,
      "complete switch",
    );
    const serverStatus = (await (await fetch(`http://${admin}/status`)).json()) as {
      trustBundle: { roots: { sha256: string }[] };
      rotation: { signingFingerprint: string };
    };
    assert.deepEqual(
      serverStatus.trustBundle.roots.map((r) => r.sha256),
      [serverStatus.rotation.signingFingerprint],
    );
    assert.ok(!serverStatus.trustBundle.roots.some((r) => r.sha256 === firstRoot));
    assert.ok(
      server.lines.filter((l) => l.event === "serving_cert.issued").length >= 2,
      "serving cert issued at start and re-issued when the signing root changed",
    );
    const served = await servingCertificate(address);
    const newRoot = new X509Certificate(await readFile(join(caDir, "ca.crt"), "utf8"));
    assert.ok(served.verify(newRoot.publicKey), "the serving certificate is signed by the new root");
    // The plain files now hold the new root too.
    assert.equal(
      fingerprints(await readFile(join(caDir, "ca.crt"), "utf8"))[0],
      serverStatus.rotation.signingFingerprint,
    );

    // Agents follow within moments; their SDS streams saw old, old+new, new without reconnecting.
    await untilNoWorkloadTrusts(workloads, firstRoot);
    for (const w of workloads) {
      assertFollowedOnOpenStream(w);
      const leaf = new X509Certificate((w.served as Served).cert);
      const root = new X509Certificate((w.served as Served).rootca);
      assert.ok(leaf.verify(root.publicKey), `${w.name}: the served leaf chains to the new root`);
    }
    // An agent whose own renewal landed between the order's `before` and its arrival (a second or
    // two under load) has nothing to renew (the order covers certificates obtained before it);
    // every other agent was told.
    const state = JSON.parse(await readFile(join(caDir, "rotation.json"), "utf8")) as {
      timestamps: { "signing-new": string };
    };
    const before = Date.parse(state.timestamps["signing-new"]);
    for (const agent of agents) {
      assert.ok(
        agent.lines.some(
          (l) =>
            l.event === "certificate.renew_requested" ||
            (l.event === "certificate.rotated" &&
              Number(l.time) >= before &&
              Number(l.time) < before + 2_000),
        ),
        `${agent.name} was told to renew, or renewed after the order's time`,
      );
    }
    const metrics = await (await fetch(`http://${admin}/metrics`)).text();
    assert.match(metrics, /osm_cert_server_agents_on_bundle\{version="[0-9a-f]{16}"\} 2/);
    assert.deepEqual(traffic?.failures, [], `failed handshakes out of ${traffic?.handshakes}`);
    assert.ok((traffic?.handshakes ?? 0) > 100, `handshakes made: ${traffic?.handshakes}`);
    process.stdout.write(
      `# handshakes during the rotation: ${traffic?.handshakes}, failures: ${traffic?.failures.length}\n`,
    );
  });

  test("a second rotation times out on a straggler, lists it, and rolls back before phase 3", async () => {
    const before = (await (await fetch(`http://${admin}/status`)).json()) as {
      trustBundle: { version: string };
    };
    const straggling = await runCli([
      "rotate-root",
      "--ca-dir",
      caDir,
      "--again",
      "--server",
      admin,
      "--server",
      "127.0.0.1:1",
      "--wait-agents",
      "2s",
      "--agent-reconnect-grace",
      "3s",
    ]);
    assert.equal(straggling.code, 1);
    assert.match(straggling.stderr, /stragglers: .*server 127\.0\.0\.1:1 \(fetch failed\)/);
    assert.match(straggling.stderr, /stays at phase 1/);
    const rollback = await runCli(["rotate-root", "--ca-dir", caDir, "--rollback"]);
    assert.equal(rollback.code, 0, rollback.stderr);
    assert.match(say(rollback), /rolled back/);
    const twice = await runCli(["rotate-root", "--ca-dir", caDir, "--rollback"]);
    assert.match(say(twice), /already rolled back; nothing to do/);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const now = (await (await fetch(`http://${admin}/status`)).json()) as {
        trustBundle: { version: string };
      };
      if (now.trustBundle.version === before.trustBundle.version) break;
      assert.ok(Date.now() < deadline, "the server followed the rollback");
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 1_000));
    assert.deepEqual(traffic?.failures, [], `failed handshakes out of ${traffic?.handshakes}`);
  });

  test("a corrupt rotation state stops the command with a clear message and changes nothing", async () => {
    const path = join(caDir, "rotation.json");
    const good = await readFile(path, "utf8");
    await writeFile(path, good.replace('"phase": "rolled-back"', '"phase": "sideways"'));
    try {
      const result = await rotate(["--again"]);
      assert.equal(result.code, 1);
      assert.match(
        result.stderr,
        /rotation state is unusable \(unknown phase "sideways"\); nothing was changed/,
      );
      assert.equal((await readFile(path, "utf8")).includes("sideways"), true);
      await server.waitForEvent("root.rotation_state_unusable", 15_000);
      assert.deepEqual(traffic?.failures, []);
    } finally {
      await writeFile(path, good);
    }
  });
});
