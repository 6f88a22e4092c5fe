// The real processes over real sockets: `osm-cert server`, `osm-cert issue bootstrap`, `osm-cert
// agent`, and an SDS client built from Envoy's canonical protos, as Envoy would use them.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connectSds, decodeSecrets, type SdsResponse, SdsStream } from "../helpers/envoy-sds-client.js";
import { tempDir } from "../helpers/pki.js";
import {
  type CliProcess,
  issueBootstrapDir,
  runCli,
  startBootstrapAgent,
  startCli,
  startServerProcess,
} from "../helpers/processes.js";

async function waitUntil(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function readyz(admin: string): Promise<number> {
  return (await fetch(`http://${admin}/readyz`)).status;
}

function secretsOf(response: SdsResponse) {
  return new Map(decodeSecrets(response).map((s) => [s.name, s]));
}

function issueBootstrap(dir: string, caDir: string, name: string, ns: string, sa: string) {
  return issueBootstrapDir(caDir, join(dir, `${name}-bootstrap`), ns, sa);
}

function startAgent(
  name: string,
  server: string,
  bootstrap: string,
  socket: string,
  extra: string[] = [],
): CliProcess {
  return startBootstrapAgent({
    name: `agent ${name}`,
    server,
    bootstrapDir: bootstrap,
    namespace: "bookstore",
    serviceAccount: "bookstore-v2",
    socket,
    extra,
  });
}

describe("end to end: server, agent, Envoy SDS", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: CliProcess;
  let address: string;
  let bootstrap: string;
  let agent: CliProcess;
  let agentAdmin: string;
  const socket = () => join(dir.path, "sds.sock");

  before(async () => {
    dir = await tempDir();
    const caDir = join(dir.path, "ca");
    ({ server, address } = await startServerProcess(caDir));
    bootstrap = await issueBootstrap(dir.path, caDir, "bookstore", "bookstore", "bookstore-v2");
    agent = startAgent("bookstore", address, bootstrap, socket(), [
      "--cert-validity",
      "6s",
      "--rotation-fraction",
      "0.5",
    ]);
    agentAdmin = (await agent.waitForEvent("agent.started")).admin as string;
  });

  after(async () => {
    await agent?.stop();
    await server?.stop();
    await dir.remove();
  });

  test("StreamSecrets serves default and ROOTCA; key matches; chain verifies with openssl; ACK waits for the rotation", async () => {
    const stream = new SdsStream(connectSds(socket()));
    try {
      stream.request(["default", "ROOTCA"]);
      const first = await stream.next(0, 15_000);
      assert.ok(first, "first response");
      assert.ok(first.version_info !== "" && first.nonce !== "");
      const secrets = secretsOf(first);
      const cert = secrets.get("default");
      const rootca = secrets.get("ROOTCA");
      assert.ok(cert?.certificateChain && cert.privateKey && rootca?.trustedCa);
      const leaf = new X509Certificate(cert.certificateChain);
      assert.ok(leaf.checkPrivateKey(createPrivateKey(cert.privateKey)), "key matches the leaf");
      assert.match(
        leaf.subjectAltName ?? "",
        /URI:spiffe:\/\/cluster\.local\/ns\/bookstore\/sa\/bookstore-v2/,
      );
      await writeFile(join(dir.path, "leaf.pem"), cert.certificateChain);
      await writeFile(join(dir.path, "rootca.pem"), rootca.trustedCa);
      const verify = execFileSync(
        "openssl",
        ["verify", "-CAfile", join(dir.path, "rootca.pem"), join(dir.path, "leaf.pem")],
        { encoding: "utf8" },
      );
      assert.match(verify, /leaf\.pem: OK/);

      // ACK: nothing more until the cert rotates (validity 6s, fraction 0.5, so ~3 s).
      stream.request(["default", "ROOTCA"], { version: first.version_info, nonce: first.nonce });
      const early = await stream.next(1, 1_000);
      assert.equal(early, null, "an ACK is not answered before something changes");
      const rotated = await stream.next(1, 15_000);
      assert.ok(rotated, "the rotation is pushed on the open stream");
      assert.notEqual(rotated.version_info, first.version_info);
      assert.notEqual(rotated.nonce, first.nonce);
      const next = new X509Certificate(secretsOf(rotated).get("default")?.certificateChain as string);
      assert.notEqual(next.serialNumber, leaf.serialNumber);
    } finally {
      stream.end();
    }
  });

  test("FetchSecrets returns the current secrets", async () => {
    const client = connectSds(socket());
    try {
      const response = await new Promise<SdsResponse>((resolve, reject) =>
        (client.FetchSecrets as (r: object, cb: (e: Error | null, r?: SdsResponse) => void) => void).call(
          client,
          {
            resource_names: ["default", "ROOTCA"],
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
          },
          (e, r) => (e ? reject(e) : resolve(r as SdsResponse)),
        ),
      );
      assert.deepEqual([...secretsOf(response).keys()].sort(), ["ROOTCA", "default"]);
    } finally {
      client.close();
    }
  });

  test("admin: ready with a cert, status JSON names the identity and serial, metrics count streams", async () => {
    assert.equal(await readyz(agentAdmin), 200);
    const status = (await (await fetch(`http://${agentAdmin}/status`)).json()) as {
      identity: string;
      certificate: { serialNumber: string; valid: boolean };
      trustBundle: { sha256: string }[];
    };
    assert.equal(status.identity, "bookstore-v2.bookstore");
    assert.equal(status.certificate.valid, true);
    assert.match(status.certificate.serialNumber, /^[0-9A-F]+$/);
    assert.equal(status.trustBundle.length, 1);
    const metrics = await (await fetch(`http://${agentAdmin}/metrics`)).text();
    assert.match(metrics, /osm_cert_agent_rotations_total\{result="success"\} \d+/);
    assert.match(metrics, /osm_cert_agent_sds_streams \d+/);
  });

  test("server down later: the agent keeps serving its valid cert and stays ready", async () => {
    const caDir = join(dir.path, "ca2");
    const own = await startServerProcess(caDir);
    const boot = await issueBootstrap(dir.path, caDir, "outage", "bookstore", "bookstore-v2");
    const sock = join(dir.path, "outage.sock");
    const a = startAgent("outage", own.address, boot, sock, ["--cert-validity", "1h"]);
    try {
      const admin = (await a.waitForEvent("agent.started")).admin as string;
      await waitUntil("agent ready", async () => (await readyz(admin)) === 200);
      await own.server.stop();
      const stream = new SdsStream(connectSds(sock));
      stream.request(["default"]);
      const served = await stream.next(0, 5_000);
      assert.ok(served, "still serving while the server is down");
      assert.equal(await readyz(admin), 200, "still ready with a valid cert");
      stream.end();
    } finally {
      await a.stop();
    }
    assert.equal(existsSync(sock), false, "SIGTERM removes the socket");
  });

  test("server down at start: not ready, backs off, becomes ready when the server appears", async () => {
    const caDir = join(dir.path, "ca3");
    const boot = await issueBootstrap(dir.path, caDir, "late", "bookstore", "bookstore-v2");
    const sock = join(dir.path, "late.sock");
    // Reserve a port by starting and stopping a server on it, then start the agent against it.
    const first = await startServerProcess(caDir);
    await first.server.stop();
    const a = startAgent("late", first.address, boot, sock);
    try {
      const admin = (await a.waitForEvent("agent.started")).admin as string;
      await a.waitForEvent("certificate.request_failed");
      assert.equal(await readyz(admin), 503);
      assert.equal(statSync(sock).mode & 0o777, 0o600, "socket mode 0600");
      const again = startCli("server", [
        "server",
        "--ca-dir",
        caDir,
        "--listen",
        first.address,
        "--admin-listen",
        "127.0.0.1:0",
      ]);
      try {
        await again.waitForEvent("server.started");
        await waitUntil(
          "agent ready after the server appears",
          async () => (await readyz(admin)) === 200,
          40_000,
        );
      } finally {
        await again.stop();
      }
      const failures = a.lines.filter((l) => l.event === "certificate.request_failed");
      assert.ok(
        failures.every((l) => l.status === "UNAVAILABLE"),
        JSON.stringify(failures.map((l) => l.status)),
      );
    } finally {
      await a.stop();
    }
  });

  test("bad flag values exit 2 with one clear line", async () => {
    const cases: [string[], RegExp][] = [
      [
        ["server", "--service-cert-validity-duration", "abc"],
        /invalid --service-cert-validity-duration: invalid duration "abc"/,
      ],
      [
        ["server", "--certificate-manager", "acme"],
        /invalid --certificate-manager: "acme" is not one of tresor, vault, cert-manager/,
      ],
      [
        [
          "agent",
          "--server",
          "h:1",
          "--ca-bundle",
          "x",
          "--namespace",
          "n",
          "--service-account",
          "s",
          "--cert-validity",
          "1d",
        ],
        /invalid --cert-validity/,
      ],
      [["nonsense"], /unknown command "nonsense"/],
    ];
    for (const [argv, pattern] of cases) {
      const result = await runCli(argv);
      assert.equal(result.code, 2, `${argv.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr.split("\n")[0] as string, pattern);
    }
  });

  test("a corrupt CA directory stops start-up with a clear message and is left untouched", async () => {
    const caDir = join(dir.path, "ca");
    const other = join(dir.path, "ca-mismatch");
    await runCli([
      "issue",
      "bootstrap",
      "--namespace",
      "a",
      "--service-account",
      "b",
      "--ca-dir",
      other,
      "--out",
      join(dir.path, "x"),
    ]);
    const { readFile, copyFile } = await import("node:fs/promises");
    await copyFile(join(caDir, "private.key"), join(other, "private.key"));
    const before = await readFile(join(other, "ca.crt"), "utf8");
    const result = await runCli([
      "server",
      "--ca-dir",
      other,
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
    ]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /private\.key does not match the public key in ca\.crt/);
    assert.equal(await readFile(join(other, "ca.crt"), "utf8"), before);
  });
});
