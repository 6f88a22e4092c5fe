// Issue 9's Done-when in Kubernetes mode: two `osm-cert server` replicas (real processes) against
// the fake API server keep the root in the osm-ca-bundle Secret and follow the rotation Secret
// beside it; two token-authenticated agents (reaching the replicas through a TCP balancer, as
// through the server's Service) serve two workloads that make a fresh
// mTLS handshake every 50 ms, both ways, with exactly their SDS secrets. `osm-cert rotate-root
// --kubeconfig` is SIGKILLed in phase 2 together with one replica; the replica restarts and the
// command resumes; in phase 4 the other replica is SIGKILLed and restarted. Zero failed
// handshakes; SDS streams see ROOTCA and default change without reconnecting; at the end no
// replica, agent or Secret trusts the old root. A second rotation stalls in phase 2 and is rolled
// back. The store's resourceVersion preconditions meet real 409s from the fake.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { KubeClient, SECRETS, StaticToken } from "../../server/kubernetes/client.js";
import { generateRoot } from "../../server/providers/tresor/ca-material.js";
import { fingerprintOf } from "../../server/providers/tresor/rotation-state.js";
import {
  type SecretRotationClient,
  SecretRotationStore,
} from "../../server/providers/tresor/secret-rotation-store.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
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
import { CliProcess, runCli, startCli } from "../helpers/processes.js";
import { TcpBalancer } from "../helpers/tcp-balancer.js";

const FAKE = fileURLToPath(new URL("../fakes/kube-apiserver-process.js", import.meta.url));
const SERVICE_VALIDITY = "20s";

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

interface Replica {
  readonly address: string;
  readonly admin: string;
  process: CliProcess;
}

interface ServerStatus {
  trustBundle: { version: string; roots: { sha256: string }[] };
  rotation: { signingFingerprint: string; phase: string | null };
  agents: { byVersion: Record<string, number> };
}

const statusOf = async (replica: Replica) =>
  (await (await fetch(`http://${replica.admin}/status`)).json()) as ServerStatus;

describe("root rotation under continuous mTLS traffic (Kubernetes mode, two replicas)", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let fake: CliProcess;
  let control: string;
  let kubeconfig: string;
  const replicas: Replica[] = [];
  const agents: CliProcess[] = [];
  const workloads: Workload[] = [];
  const listeners: Listener[] = [];
  let traffic: Traffic | null = null;
  let balancer: TcpBalancer | null = null;
  let firstRoot = "";

  const secret = async (name: string) => {
    const all = (await (await fetch(`${control}/objects?resource=secrets&namespace=osm-system`)).json()) as {
      metadata: { name: string; annotations?: Record<string, string> };
      data: Record<string, string>;
    }[];
    return all.find((s) => s.metadata.name === name);
  };
  const startReplica = async (replica: Replica) => {
    replica.process = startCli("server", [
      "server",
      "--kubeconfig",
      kubeconfig,
      "--listen",
      replica.address,
      "--admin-listen",
      replica.admin,
      "--service-cert-validity-duration",
      SERVICE_VALIDITY,
    ]);
    await replica.process.waitForEvent("server.started", 20_000);
  };
  const rotateArgs = (grace: string) => [
    "rotate-root",
    "--kubeconfig",
    kubeconfig,
    "--osm-namespace",
    "osm-system",
    "--server",
    replicas.map((r) => r.admin).join(","),
    "--wait-agents",
    "60s",
    "--renew-window",
    "3s",
    "--service-cert-validity-duration",
    SERVICE_VALIDITY,
    "--clock-skew",
    "1s",
    "--follow-lag",
    "2s",
    "--agent-reconnect-grace",
    grace,
  ];
  const said = (p: { lines: { msg?: string }[] }) => p.lines.map((l) => l.msg ?? "").join("\n");

  before(async () => {
    dir = await tempDir();
    kubeconfig = join(dir.path, "kubeconfig.json");
    fake = new CliProcess(
      spawn(process.execPath, [FAKE, kubeconfig, "bookstore", "bookbuyer"], {
        stdio: ["ignore", "pipe", "pipe"],
      }),
      "fake-apiserver",
    );
    control = (await fake.waitForEvent("fake.started")).control as string;
    // A meshed namespace: the leader keeps the trust-bundle ConfigMap there.
    await fetch(`${control}/seed`, {
      method: "POST",
      body: JSON.stringify({
        resource: "namespaces",
        object: { metadata: { name: "meshed", labels: { "openservicemesh.io/monitored-by": "osm" } } },
      }),
    });
    for (let i = 0; i < 2; i++) {
      const replica: Replica = {
        address: `127.0.0.1:${await freePort()}`,
        admin: `127.0.0.1:${await freePort()}`,
        process: undefined as unknown as CliProcess,
      };
      // Tracked before it starts: after() stops a replica that never came up, too.
      replicas.push(replica);
      await startReplica(replica);
    }
    balancer = await TcpBalancer.start(replicas.map((r) => r.address));
    const caCert = Buffer.from((await secret("osm-ca-bundle"))?.data["ca.crt"] ?? "", "base64").toString();
    firstRoot = fingerprints(caCert)[0] as string;
    await writeFile(join(dir.path, "root.pem"), caCert);
    for (const [ns, sa] of [
      ["bookstore", "bookstore-v2"],
      ["bookbuyer", "bookbuyer"],
    ]) {
      const tokenFile = join(dir.path, `${sa}.token`);
      const minted = (await (
        await fetch(`${control}/token`, {
          method: "POST",
          body: JSON.stringify({ namespace: ns, serviceAccount: sa }),
        })
      ).json()) as { token: string };
      await writeFile(tokenFile, minted.token);
      const socket = join(dir.path, `${sa}.sock`);
      const agent = startCli(`agent ${sa}`, [
        "agent",
        "--server",
        (balancer as TcpBalancer).address,
        "--ca-bundle",
        join(dir.path, "root.pem"),
        "--namespace",
        ns as string,
        "--service-account",
        sa as string,
        "--token-file",
        tokenFile,
        "--sds-socket",
        socket,
        "--admin-listen",
        "127.0.0.1:0",
        "--cert-validity",
        SERVICE_VALIDITY,
        // Renewing at 30 % leaves 14 s for a reconnect plus the agent's retry backoff under load.
        "--rotation-fraction",
        "0.3",
      ]);
      agents.push(agent);
      await agent.waitForEvent("certificate.rotated", 20_000);
      workloads.push(new Workload(sa as string, socket));
    }
    traffic = await startTraffic(workloads, listeners);
  });

  after(async () => {
    await stopTraffic(traffic, workloads, listeners);
    for (const agent of agents) await agent.stop();
    await Promise.all(replicas.map((r) => r.process?.stop()));
    await balancer?.close();
    await fake?.stop();
    await dir?.remove();
  });

  test("rotate-root and a replica SIGKILLed in phase 2 and resumed, the other replica SIGKILLed in phase 4: zero failed handshakes, the old root trusted by nobody", async () => {
    const [replicaA, replicaB] = replicas as [Replica, Replica];
    await new Promise((r) => setTimeout(r, 1_000));

    // First run: phase 1, then phase 2 cannot finish (a reconnect grace longer than the replicas'
    // uptime); SIGKILL it there, and replica B with it.
    const first = startCli("rotate-root", rotateArgs("10m"));
    await first.waitFor((l) => /phase 2\/4: \d+ agent/.test(l.msg ?? ""), 20_000, "phase 2 probing");
    await Promise.all([first.stop("SIGKILL"), replicaB.process.stop("SIGKILL")]);
    // Restarted at once, as a Deployment would: its agent keeps serving its certificate meanwhile.
    await startReplica(replicaB);
    assert.match(said(first), /phase 1\/4 done: generated new root [0-9a-f]{16}/);
    const status = await runCli(["rotate-root", "--kubeconfig", kubeconfig, "--status"]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(said(status), /phase: published/);
    assert.match(said(status), /root old: [0-9a-f]{64} expires .* \(signing, in bundle\) role active/);
    assert.match(said(status), /root new: [0-9a-f]{64} expires .* \(in bundle\) role passive/);
    // Replica A followed the Secret by itself: its bundle holds both roots, the old one signs.
    const published = await statusOf(replicaA);
    assert.equal(published.rotation.phase, "published");
    assert.equal(published.trustBundle.roots.length, 2);
    assert.equal(published.rotation.signingFingerprint, firstRoot);

    // A replica knows only the agents connected to it: phase 2 trusts a restarted replica's count
    // after --agent-reconnect-grace (35s by default). The test waits until B's agents reconnected
    // (through the balancer, to either replica) instead, and resumes with a short grace.
    const agentCount = async () => {
      let n = 0;
      for (const replica of replicas)
        for (const c of Object.values((await statusOf(replica)).agents.byVersion)) n += c;
      return n;
    };
    const reconnectBy = Date.now() + 30_000;
    while ((await agentCount()) < 2) {
      assert.ok(Date.now() < reconnectBy, "both agents are connected again");
      await new Promise((r) => setTimeout(r, 100));
    }
    const restarted = await statusOf(replicaB);
    assert.equal(
      restarted.trustBundle.version,
      published.trustBundle.version,
      "B starts on the rotation state",
    );

    // Resumed; in phase 4's wait replica A is SIGKILLed and restarted.
    const second = startCli("rotate-root", rotateArgs("3s"));
    await second.waitFor((l) => (l.msg ?? "").includes("phase 4/4: waiting"), 60_000, "phase 4 wait");
    assert.match(said(second), /resuming the rotation at phase published/);
    assert.match(said(second), /phase 2\/4: 2 agent\(s\) on bundle [0-9a-f]{16}, 0 not yet/);
    assert.match(said(second), /phase 3\/4: all 2 server\(s\) sign with the new root/);
    await replicaA.process.stop("SIGKILL");
    await startReplica(replicaA);
    const signingNew = await statusOf(replicaA);
    assert.equal(signingNew.rotation.phase, "signing-new");
    assert.notEqual(
      signingNew.rotation.signingFingerprint,
      firstRoot,
      "A restarts signing with the new root",
    );
    const done = await second.exited;
    assert.equal(done.code, 0, second.stderr);
    assert.match(said(second), /rotation complete/);

    const again = await runCli(rotateArgs("3s"));
    assert.equal(again.code, 0, again.stderr);
    assert.match(said(again), /already complete .*nothing to do/);

    // Both replicas: the new root alone, signing, and their serving certificates under it.
    const newRoot = signingNew.rotation.signingFingerprint;
    for (const replica of replicas) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const now = await statusOf(replica);
        if (now.rotation.phase === "complete") {
          assert.deepEqual(
            now.trustBundle.roots.map((r) => r.sha256),
            [newRoot],
          );
          break;
        }
        assert.ok(Date.now() < deadline, `${replica.admin} followed phase 4`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const plain = await secret("osm-ca-bundle");
    const promoted = new X509Certificate(Buffer.from(plain?.data["ca.crt"] ?? "", "base64"));
    assert.equal(fingerprintOf(promoted), newRoot, "the CA bundle Secret holds the new root");
    const rotation = await secret("osm-ca-bundle-rotation");
    const roles = JSON.parse(rotation?.metadata.annotations?.["osm-cert.io/root-roles"] ?? "{}");
    assert.deepEqual(Object.values(roles).sort(), ["active", "inactive"]);
    // The trust-bundle ConfigMap new pods mount as --ca-bundle: the new root alone.
    const configMapBy = Date.now() + 10_000;
    for (;;) {
      const maps = (await (
        await fetch(`${control}/objects?resource=configmaps&namespace=meshed`)
      ).json()) as { metadata: { name: string }; data: Record<string, string> }[];
      const bundle = maps.find((m) => m.metadata.name === "osm-ca-root-cert")?.data["ca.crt"] ?? "";
      if (bundle !== "" && fingerprints(bundle).join() === newRoot) break;
      assert.ok(Date.now() < configMapBy, `the trust-bundle ConfigMap holds the new root alone (${bundle})`);
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const replica of replicas) {
      const served = await servingCertificate(replica.address);
      assert.ok(served.verify(promoted.publicKey), `${replica.address} serves a cert of the new root`);
    }

    // Agents: their open SDS streams saw old, old+new, new, and a new default, without reconnecting.
    await untilNoWorkloadTrusts(workloads, firstRoot);
    for (const w of workloads) {
      assertFollowedOnOpenStream(w);
      const leaf = new X509Certificate((w.served as Served).cert);
      assert.ok(leaf.verify(promoted.publicKey), `${w.name}: the served leaf chains to the new root`);
    }
    assert.deepEqual(traffic?.failures, [], `failed handshakes out of ${traffic?.handshakes}`);
    assert.ok((traffic?.handshakes ?? 0) > 100, `handshakes made: ${traffic?.handshakes}`);
    process.stdout.write(
      `# handshakes during the Kubernetes-mode rotation: ${traffic?.handshakes}, failures: ${traffic?.failures.length}\n`,
    );
  });

  test("a second rotation that stalls in phase 2 rolls back to the current root; every replica follows", async () => {
    const before = await statusOf(replicas[0] as Replica);
    const stalled = await runCli([
      ...rotateArgs("3s"),
      "--again",
      "--server",
      "127.0.0.1:1",
      "--wait-agents",
      "2s",
    ]);
    assert.equal(stalled.code, 1);
    assert.match(stalled.stderr, /stragglers: .*server 127\.0\.0\.1:1/);
    const rollback = await runCli(["rotate-root", "--kubeconfig", kubeconfig, "--rollback"]);
    assert.equal(rollback.code, 0, rollback.stderr);
    assert.match(said(rollback), /rolled back/);
    const twice = await runCli(["rotate-root", "--kubeconfig", kubeconfig, "--rollback"]);
    assert.match(said(twice), /already rolled back; nothing to do/);
    for (const replica of replicas) {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const now = await statusOf(replica);
        if (now.rotation.phase === "rolled-back") {
          assert.equal(now.trustBundle.version, before.trustBundle.version);
          assert.equal(now.rotation.signingFingerprint, before.rotation.signingFingerprint);
          break;
        }
        assert.ok(Date.now() < deadline, `${replica.admin} followed the rollback`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const status = await runCli(["rotate-root", "--kubeconfig", kubeconfig, "--status"]);
    assert.match(said(status), /phase: rolled-back/);
    assert.match(said(status), /root new: [0-9a-f]{64} .*\(not in bundle\) role inactive/);
    await new Promise((r) => setTimeout(r, 1_000));
    await traffic?.stop();
    assert.deepEqual(traffic?.failures, [], `failed handshakes out of ${traffic?.handshakes}`);
  });
});

describe("rotation Secret: resourceVersion preconditions", () => {
  let fake: FakeKubeApiServer;
  let client: KubeClient;
  before(async () => {
    fake = await FakeKubeApiServer.start({ namespaces: ["osm-system"] });
    client = new KubeClient({
      config: {
        server: fake.url,
        caPem: fake.caPem,
        token: new StaticToken(fake.serviceAccountToken("osm-system", "osm-cert"), "test"),
        namespace: "osm-system",
        source: "test",
      },
      retry: { baseDelayMs: 10, maxDelayMs: 40 },
    });
  });
  after(async () => {
    await client.close();
    await fake.close();
  });

  const store = () =>
    new SecretRotationStore({ client, namespace: "osm-system", caBundleSecretName: "osm-ca-bundle" });
  const ROOT = { keyAlgorithm: "ecdsa-p256" as const, commonName: "osm.root", validityMs: 3_600_000 };

  test("two writers adding roots to a Secret that does not exist yet both land (AlreadyExists → re-read → update); the same id with another root is refused", async () => {
    const [one, two] = await Promise.all([generateRoot(ROOT), generateRoot(ROOT)]);
    const idOf = (pem: string) => fingerprintOf(new X509Certificate(pem)).slice(0, 16);
    await Promise.all([store().writeRoot(idOf(one.caCert), one), store().writeRoot(idOf(two.caCert), two)]);
    assert.equal((await store().readRoot(idOf(one.caCert))).caCert, one.caCert);
    assert.equal((await store().readRoot(idOf(two.caCert))).caCert, two.caCert);
    await assert.rejects(store().writeRoot(idOf(one.caCert), two), /already holds a different root/);
    const conflicts = fake.requests.filter((r) => r.verb === "update" && r.status === 409);
    const creates = fake.requests.filter((r) => r.verb === "create" && r.resource === "secrets");
    assert.ok(conflicts.length + creates.length >= 2, "the race went through the API server's referee");
  });

  test("a real 409 (someone wrote between read and update) re-reads and retries, keeping both writes; endless conflicts give up after 5 tries", async () => {
    // Before each update this client lets another writer change the Secret, so the update's
    // resourceVersion precondition fails at the API server.
    let interfere = 0;
    const racing: SecretRotationClient = {
      get: (type, name, options) => client.get(type, name, options),
      create: (type, object, options) => client.create(type, object, options),
      watch: (type, options) => client.watch(type, options),
      update: async (type, object, options) => {
        if (interfere > 0) {
          interfere -= 1;
          const current = await client.get(SECRETS, "osm-ca-bundle-rotation", { namespace: "osm-system" });
          current.metadata = {
            ...current.metadata,
            annotations: { ...current.metadata?.annotations, other: String(interfere) },
          };
          await client.update(SECRETS, current, { namespace: "osm-system" });
        }
        return client.update(type, object, options);
      },
    };
    const raced = new SecretRotationStore({
      client: racing,
      namespace: "osm-system",
      caBundleSecretName: "osm-ca-bundle",
    });
    const root = await generateRoot(ROOT);
    const id = fingerprintOf(new X509Certificate(root.caCert)).slice(0, 16);
    const conflictsBefore = fake.requests.filter((r) => r.verb === "update" && r.status === 409).length;
    interfere = 1;
    await raced.writeRoot(id, root);
    assert.equal(
      fake.requests.filter((r) => r.verb === "update" && r.status === 409).length,
      conflictsBefore + 1,
    );
    assert.equal((await store().readRoot(id)).caCert, root.caCert);
    const stored = await client.get(SECRETS, "osm-ca-bundle-rotation", { namespace: "osm-system" });
    assert.equal(stored.metadata?.annotations?.other, "0", "the other writer's change was kept");

    const another = await generateRoot(ROOT);
    const anotherId = fingerprintOf(new X509Certificate(another.caCert)).slice(0, 16);
    interfere = 100;
    await assert.rejects(raced.writeRoot(anotherId, another), /changed by someone else on each of 5 tries/);
    interfere = 0;
    await assert.rejects(store().readRoot(anotherId), /missing/);
  });

  test("a state changed by another rotate-root while this one ran is not overwritten", async () => {
    const [one, two] = await Promise.all([generateRoot(ROOT), generateRoot(ROOT)]);
    const record = (pem: string, role: "old" | "new") => {
      const fingerprint = fingerprintOf(new X509Certificate(pem));
      return { id: fingerprint.slice(0, 16), fingerprint, notAfter: new Date().toISOString(), role };
    };
    const old = record(one.caCert, "old");
    const next = record(two.caCert, "new");
    const state = {
      version: 1 as const,
      phase: "published" as const,
      roots: [old, next],
      bundle: [old.id, next.id],
      signing: old.id,
      renew: null,
      timestamps: { started: new Date().toISOString() },
      dropOldAfter: null,
    };
    const mine = store();
    const theirs = store();
    assert.equal(await mine.readState(), null);
    assert.equal(await theirs.readState(), null);
    await theirs.writeState(state);
    await assert.rejects(
      mine.writeState({ ...state, timestamps: { started: "2026-01-01T00:00:00.000Z" } }),
      /the rotation state changed while this command ran/,
    );
    assert.deepEqual((await store().readState())?.timestamps, state.timestamps);
  });
});
