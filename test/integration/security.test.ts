// Regression tests for the adversarial review of issue 11: each finding is reproduced the way an
// attacker (or a careless operator) would meet it, against real processes over real sockets.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { chmod, lstat, mkdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { makeIdentity } from "../../common/identity.js";
import { certificateServiceDefinition } from "../../proto/signing-api.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { bootstrapCert, issueWithCa, openTestCa, serviceCsrPem, tempDir } from "../helpers/pki.js";
import {
  type CliProcess,
  issueBootstrapDir,
  runCli,
  startBootstrapAgent,
  startServerProcess,
} from "../helpers/processes.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";
import { startAttack } from "../helpers/slow-request-attack.js";

function csrFor(sa: string, ns: string, commonName?: string): Promise<string> {
  return serviceCsrPem(sa, ns, { commonName });
}

async function metric(admin: string, name: string): Promise<number> {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name) && (line[name.length] === " " || line[name.length] === "{")) {
      total += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return total;
}

function rssMb(pid: number): Promise<number> {
  return readFile(`/proc/${pid}/status`, "utf8").then(
    (status) => Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? "0") / 1024,
  );
}

describe("security: the signing server", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let ca: TresorProvider;
  let server: CliProcess;
  let address: string;
  let admin: string;
  let root: string;

  before(async () => {
    dir = await tempDir();
    const caDir = join(dir.path, "ca");
    ca = await openTestCa(caDir);
    root = ca.trustBundle().roots.join("");
    ({ server, address, admin } = await startServerProcess(caDir, [
      "--server-san",
      "localhost,127.0.0.1,osm-cert.osm-system.svc,osm-cert.osm-system.svc.cluster.local,signer.osm.cluster.local",
      "--request-receive-timeout",
      "1s",
      "--max-receiving-requests",
      "200",
    ]));
  });

  after(async () => {
    await server?.stop();
    await dir?.remove();
  });

  test("finding 1: no workload gets a certificate valid for a name our components are verified by", async () => {
    // ServiceAccount "osm-cert.osm-system" in namespace "svc" would be osm-cert.osm-system.svc.cluster.local.
    const cases: [string, string, RegExp][] = [
      ["osm-cert.osm-system", "svc", /namespace "svc" cannot hold mesh identities/],
      ["web.default", "pod", /namespace "pod" cannot hold mesh identities/],
      ["signer", "osm", /signing server itself is verified by/],
    ];
    for (const [sa, ns, pattern] of cases) {
      const client = new TestSigningClient(address, root, await bootstrapCert(ca, makeIdentity(sa, ns)));
      try {
        const { status, details } = await statusOf(client.create(await csrFor(sa, ns)));
        assert.equal(status, "PERMISSION_DENIED", `${sa}.${ns}: ${details}`);
        assert.match(details, pattern);
      } finally {
        client.close();
      }
    }
  });

  test("finding 1: the serving certificate carries the signing server's SPIFFE ID, which no workload can get", async () => {
    const serving = await new Promise<X509Certificate>((resolve, reject) => {
      import("node:tls").then(({ connect }) => {
        const socket = connect({
          host: "127.0.0.1",
          port: Number(address.split(":")[1]),
          ca: root,
          servername: "localhost",
          ALPNProtocols: ["h2"],
        });
        socket.once("secureConnect", () => {
          resolve(new X509Certificate(socket.getPeerCertificate(true).raw));
          socket.destroy();
        });
        socket.once("error", reject);
      }, reject);
    });
    assert.match(serving.subjectAltName ?? "", /URI:spiffe:\/\/cluster\.local\/osm-cert\/signing-server/);
    assert.ok(Date.parse(serving.validTo) - Date.now() <= 24 * 3_600_000 + 60_000, "short-lived (24h)");
  });

  test("finding 3: a DNS SAN that reads like a URI SAN does not authenticate anyone", async () => {
    const forged = await issueWithCa(ca, "bootstrap", {
      commonName: "attacker",
      dnsNames: ["xURI:spiffe://cluster.local/ns/victim/sa/victim"],
    });
    const client = new TestSigningClient(address, root, forged);
    try {
      const { status, details } = await statusOf(client.create(await csrFor("victim", "victim")));
      assert.equal(status, "UNAUTHENTICATED", details);
      assert.match(details, /neither an xDS bootstrap name/);
    } finally {
      client.close();
    }
  });

  test("finding 10: a 2,000-character non-ASCII CN is denied with a short message, and denials are log-budgeted", async () => {
    const identity = makeIdentity("bookbuyer", "bookbuyer");
    const client = new TestSigningClient(address, root, await bootstrapCert(ca, identity));
    try {
      const huge = "ü€".repeat(1_000);
      const { status, details } = await statusOf(client.create(await csrFor("bookbuyer", "bookbuyer", huge)));
      assert.equal(status, "PERMISSION_DENIED", details);
      assert.ok(details.length < 700, `message is ${details.length} characters`);
      assert.match(details, /\\u00fc\\u20ac.*more characters/);
      const before = server.lines.filter((l) => l.event === "certificate.denied").length;
      const csr = await csrFor("bookbuyer", "bookbuyer", "someone-else");
      const started = Date.now();
      await Promise.all(Array.from({ length: 200 }, () => statusOf(client.create(csr))));
      await sleep(200);
      // The budget: a burst of 50, then 10 lines a second.
      const allowed = 50 + Math.ceil(((Date.now() - started) / 1000) * 10);
      const denied = server.lines.filter((l) => l.event === "certificate.denied");
      assert.ok(denied.length - before <= allowed, `${denied.length - before} denial lines for 200 denials`);
      assert.ok(denied.length - before < 200);
      assert.ok(
        denied.every((l) => JSON.stringify(l).length < 2_000),
        "every denial line stays short",
      );
    } finally {
      client.close();
    }
  });

  test("finding 2: unauthenticated slow requests cannot hold memory, and a real agent is served meanwhile", async () => {
    const pid = server.child.pid as number;
    const rssBefore = await rssMb(pid);
    const partial = startAttack({
      address,
      connections: 40,
      streamsPerConnection: 200,
      announcedBytes: 16_000,
      mode: "partial",
    });
    const headersOnly = startAttack({
      address,
      connections: 10,
      streamsPerConnection: 200,
      announcedBytes: 16_000,
      mode: "headers",
    });
    try {
      await sleep(400);
      // A legitimate agent's call during the attack.
      const identity = makeIdentity("bookstore-v2", "bookstore");
      const client = new TestSigningClient(address, root, await bootstrapCert(ca, identity));
      const started = Date.now();
      try {
        const answer = await client.create(await csrFor("bookstore-v2", "bookstore"));
        assert.ok(answer.certificate_chain.length > 0);
      } finally {
        client.close();
      }
      assert.ok(Date.now() - started < 3_000, `legitimate call took ${Date.now() - started} ms`);
      assert.ok((await metric(admin, "osm_cert_server_requests_receiving")) <= 200, "receiving is capped");
      await sleep(2_000);
      const rssDuring = await rssMb(pid);
      assert.ok(rssDuring - rssBefore < 120, `RSS grew ${Math.round(rssDuring - rssBefore)} MB under attack`);
      // Past the receive deadline nothing the attacker sent is held any more.
      assert.equal(await metric(admin, "osm_cert_server_requests_receiving"), 0);
      assert.ok((await metric(admin, "osm_cert_server_requests_refused_total")) > 0);
      const ended = [...partial.statuses(), ...headersOnly.statuses()];
      assert.ok(
        ended.some(([code]) => code === String(grpc.status.DEADLINE_EXCEEDED)),
        `statuses seen: ${JSON.stringify(ended)}`,
      );
    } finally {
      partial.stop();
      headersOnly.stop();
    }
  });
});

describe("security: the agent trusts only the signing server", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let impostor: grpc.Server;
  let calls = 0;

  before(async () => {
    dir = await tempDir();
  });
  after(async () => {
    impostor?.forceShutdown();
    await dir?.remove();
  });

  test("finding 1: a server with a mesh-signed certificate valid for the host name but without the server's SPIFFE ID is refused before any CSR is sent", async () => {
    const caDir = join(dir.path, "ca");
    const ca = await openTestCa(caDir);
    // What a workload could have been issued before the fix: a service cert valid for the address
    // the agent dials, chained to the mesh root.
    const stolen = await issueWithCa(ca, "service", {
      commonName: "localhost",
      dnsNames: ["localhost"],
      uris: ["spiffe://cluster.local/ns/attacker/sa/attacker"],
    });
    impostor = new grpc.Server();
    impostor.addService(certificateServiceDefinition(), {
      CreateCertificate: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => {
        calls++;
        callback({ code: grpc.status.UNAVAILABLE, details: "impostor" });
      },
      WatchTrustBundle: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        calls++;
        call.end();
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      impostor.bindAsync(
        "127.0.0.1:0",
        grpc.ServerCredentials.createSsl(
          null,
          [{ cert_chain: Buffer.from(stolen.certPem), private_key: Buffer.from(stolen.keyPem) }],
          false,
        ),
        (error, bound) => (error ? reject(error) : resolve(bound)),
      ),
    );
    const out = await issueBootstrapDir(caDir, join(dir.path, "bootstrap"), "bookstore", "bookstore-v2");
    const agent = startBootstrapAgent({
      server: `localhost:${port}`,
      bootstrapDir: out,
      namespace: "bookstore",
      serviceAccount: "bookstore-v2",
      socket: join(dir.path, "sds.sock"),
    });
    try {
      const failed = await agent.waitForEvent("certificate.request_failed", 20_000);
      assert.match(
        String(failed.error),
        /signing server's identity spiffe:\/\/cluster\.local\/osm-cert\/signing-server/,
      );
      assert.equal(calls, 0, "the impostor never received a call");
    } finally {
      await agent.stop();
    }
  });
});

describe("security: operator-facing files and flags", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  before(async () => {
    dir = await tempDir();
  });
  after(async () => {
    await dir?.remove();
  });

  const issue = (caDir: string, out: string) =>
    runCli([
      "issue",
      "bootstrap",
      "--namespace",
      "ns",
      "--service-account",
      "sa",
      "--ca-dir",
      caDir,
      "--out",
      out,
    ]);

  test("finding 8: `issue` creates the key 0600 even over a 0644 file, and refuses a symlink", async () => {
    const caDir = join(dir.path, "ca8");
    const out = join(dir.path, "out8");
    await mkdir(out, { recursive: true });
    await writeFile(join(out, "tls.key"), "old");
    await chmod(join(out, "tls.key"), 0o644);
    const first = await issue(caDir, out);
    assert.equal(first.code, 0, first.stderr);
    assert.equal((await stat(join(out, "tls.key"))).mode & 0o777, 0o600);
    assert.match(await readFile(join(out, "tls.key"), "utf8"), /BEGIN PRIVATE KEY/);

    const victim = join(dir.path, "victim.txt");
    await writeFile(victim, "precious");
    const linked = join(dir.path, "out8b");
    await mkdir(linked);
    await symlink(victim, join(linked, "tls.key"));
    const second = await issue(caDir, linked);
    assert.equal(second.code, 1);
    assert.match(second.stderr, /tls\.key is a symbolic link; refusing to write through it/);
    assert.equal(await readFile(victim, "utf8"), "precious");
    assert.ok((await lstat(join(linked, "tls.key"))).isSymbolicLink());
  });

  test("finding 9: a root weaker than the leaf policy (RSA-1024) is refused at start-up", async () => {
    const caDir = join(dir.path, "weak");
    await mkdir(caDir);
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-subj",
        "/CN=weak root",
        "-days",
        "30",
        "-keyout",
        join(caDir, "private.key"),
        "-out",
        join(caDir, "ca.crt"),
      ],
      { stdio: "ignore" },
    );
    const cert = new X509Certificate(await readFile(join(caDir, "ca.crt")));
    await writeFile(join(caDir, "expiration"), new Date(cert.validTo).toISOString());
    const before = await readFile(join(caDir, "ca.crt"), "utf8");
    const result = await runCli([
      "server",
      "--ca-dir",
      caDir,
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
    ]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /RSA-1024, weaker than the RSA-2048 minimum/);
    assert.equal(await readFile(join(caDir, "ca.crt"), "utf8"), before, "the root is left untouched");
  });

  test("inconsistent or unavailable server flags stop start-up with exit 2 and one line", async () => {
    const caDir = join(dir.path, "flags");
    const cases: [string[], RegExp][] = [
      [["--service-cert-validity-duration", "0"], /--service-cert-validity-duration: must be longer than 0/],
      [["--min-cert-validity", "48h"], /--min-cert-validity: 48h0m0s is longer than/],
      [
        ["--certificate-manager", "cert-manager"],
        /--certificate-manager: cert-manager needs a Kubernetes API/,
      ],
      [["--trust-domain", "svc.cluster.local"], /--trust-domain: .*"svc"/],
      [["--max-receiving-requests", "0"], /--max-receiving-requests/],
    ];
    for (const [flags, pattern] of cases) {
      const result = await runCli(["server", "--ca-dir", caDir, ...flags]);
      assert.equal(result.code, 2, `${flags.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, pattern);
      assert.equal(result.stderr.trim().split("\n").length, 1);
    }
  });

  test("--help and -h work on every subcommand, and --version prints the version", async () => {
    for (const args of [
      ["issue", "--help"],
      ["issue", "-h"],
      ["issue", "bootstrap", "-h"],
      ["server", "-h"],
      ["agent", "-h"],
    ]) {
      const result = await runCli(args);
      assert.equal(result.code, 0, `${args.join(" ")}: ${result.stderr}`);
    }
    const version = await runCli(["--version"]);
    assert.equal(version.code, 0);
    const pkg = JSON.parse(await readFile(new URL("../../../package.json", import.meta.url), "utf8")) as {
      version: string;
    };
    assert.ok(version.lines.some((l) => l.msg === `osm-cert ${pkg.version}`));
  });

  test("an agent whose start-up fails exits 1 promptly, token mode included, naming the flag", async () => {
    const token = join(dir.path, "token");
    await writeFile(token, "x.y.z");
    const common = ["agent", "--server", "127.0.0.1:1", "--namespace", "ns", "--service-account", "sa"];
    const cases: [string[], RegExp][] = [
      [
        ["--ca-bundle", join(dir.path, "missing.pem"), "--token-file", token],
        /--ca-bundle .*missing\.pem: no such file/,
      ],
      [["--ca-bundle", token, "--token-file", token], /--ca-bundle .*token: /],
      [
        [
          "--ca-bundle",
          join(dir.path, "out8", "ca.crt"),
          "--token-file",
          token,
          "--sds-socket",
          join(dir.path, "no-such-dir", "sds.sock"),
          "--admin-listen",
          "127.0.0.1:0",
        ],
        /SDS socket directory .* does not exist/,
      ],
      [
        [
          "--ca-bundle",
          join(dir.path, "out8", "ca.crt"),
          "--bootstrap-cert",
          join(dir.path, "nope.crt"),
          "--bootstrap-key",
          join(dir.path, "nope.key"),
        ],
        /--bootstrap-(cert|key) .*no such file/,
      ],
    ];
    for (const [flags, pattern] of cases) {
      const started = Date.now();
      const result = await runCli([...common, ...flags]);
      assert.equal(result.code, 1, `${flags.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, pattern);
      assert.ok(Date.now() - started < 5_000, `exited after ${Date.now() - started} ms`);
    }
  });
});
