// Vault mode with real processes over real HTTP: the fake Vault as its own process, `osm-cert
// server --certificate-manager vault`, agents with bootstrap certificates that Vault signed, and
// Envoy-style SDS clients. Certificates chain to Vault's root and carry a real mTLS handshake;
// every error row of issue 7 reaches the caller with its status and Vault's reason; an agent keeps
// serving through a sealed Vault and renews after unseal; the CA rotation reaches Envoy's ROOTCA.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomUUID, X509Certificate } from "node:crypto";
import { once } from "node:events";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { connect, createServer, type TLSSocket } from "node:tls";
import { fileURLToPath } from "node:url";
import { CliProcess } from "../../cli/child-process.js";
import { bootstrapCommonName, makeIdentity } from "../../common/identity.js";
import { generateKeyPair, privateKeyToPem } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { createCsr } from "../../common/x509/csr.js";
import { connectSds, decodeSecrets, SdsStream } from "../helpers/envoy-sds-client.js";
import type { KeyedCert } from "../helpers/pki.js";
import { tempDir } from "../helpers/pki.js";
import { runCli, startCli } from "../helpers/processes.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";

const FAKE_VAULT = fileURLToPath(new URL("../fakes/vault-process.js", import.meta.url));

interface FakeVaultInfo {
  url: string;
  control: string;
  rootPem: string;
  rootToken: string;
  serverToken: string;
}

async function startFakeVault(args: string[] = []): Promise<{ proc: CliProcess; info: FakeVaultInfo }> {
  const proc = new CliProcess(
    spawn(process.execPath, [FAKE_VAULT, ...args], { stdio: ["ignore", "pipe", "pipe"] }),
    "fake vault",
  );
  const info = (await proc.waitForEvent("fake.started")) as unknown as FakeVaultInfo;
  return { proc, info };
}

async function waitUntil(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** What an operator does with `vault write pki/sign/osm-bootstrap csr=@pod.csr common_name=<uuid>.<sa>.<ns>`. */
async function bootstrapFromVault(
  vault: FakeVaultInfo,
  dir: string,
  ns: string,
  sa: string,
): Promise<string> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const cn = bootstrapCommonName(randomUUID(), makeIdentity(sa, ns));
  const csr = encodePem("CERTIFICATE REQUEST", createCsr({ privateKey, commonName: cn }));
  const res = await fetch(`${vault.url}/v1/pki/sign/osm-bootstrap`, {
    method: "POST",
    headers: { "x-vault-token": vault.rootToken },
    body: JSON.stringify({ csr, common_name: cn, ttl: "8760h", exclude_cn_from_sans: true }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const data = ((await res.json()) as { data: { certificate: string } }).data;
  const out = join(dir, `${ns}-${sa}-bootstrap`);
  await mkdir(out, { recursive: true });
  await writeFile(join(out, "tls.crt"), `${data.certificate}\n`);
  await writeFile(join(out, "tls.key"), privateKeyToPem(privateKey), { mode: 0o600 });
  await writeFile(join(out, "ca.crt"), vault.rootPem);
  return out;
}

function startAgent(
  name: string,
  server: string,
  bootstrap: string,
  socket: string,
  ns: string,
  sa: string,
  extra: string[] = [],
) {
  return startCli(`agent ${name}`, [
    "agent",
    "--server",
    server,
    "--ca-bundle",
    join(bootstrap, "ca.crt"),
    "--namespace",
    ns,
    "--service-account",
    sa,
    "--bootstrap-cert",
    join(bootstrap, "tls.crt"),
    "--bootstrap-key",
    join(bootstrap, "tls.key"),
    "--sds-socket",
    socket,
    "--admin-listen",
    "127.0.0.1:0",
    ...extra,
  ]);
}

async function sdsSecrets(socket: string) {
  const stream = new SdsStream(connectSds(socket));
  try {
    stream.request(["default", "ROOTCA"]);
    const response = await stream.next(0, 20_000);
    assert.ok(response, "an SDS response");
    const secrets = new Map(decodeSecrets(response).map((s) => [s.name, s]));
    const cert = secrets.get("default");
    const root = secrets.get("ROOTCA");
    assert.ok(cert?.certificateChain && cert.privateKey && root?.trustedCa);
    return { chain: cert.certificateChain, key: cert.privateKey, trustedCa: root.trustedCa };
  } finally {
    stream.end();
  }
}

function spiffeOf(cert: { subjectaltname?: string }): string | undefined {
  return /URI:(spiffe:\/\/[^,\s]+)/.exec(cert.subjectaltname ?? "")?.[1];
}

describe("Vault mode: server, agents and the fake Vault as processes", { timeout: 180_000 }, () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let vault: { proc: CliProcess; info: FakeVaultInfo };
  let server: CliProcess;
  let address: string;
  let storeBoot: string;
  let buyerBoot: string;
  let store: CliProcess;
  let buyer: CliProcess;
  const sock = (name: string) => join(dir.path, `${name}.sock`);
  const ctl = async (path: string, body: unknown = {}) =>
    (await fetch(`${vault.info.control}${path}`, { method: "POST", body: JSON.stringify(body) })).json();

  before(async () => {
    dir = await tempDir();
    vault = await startFakeVault();
    server = startCli(
      "server",
      [
        "server",
        "--certificate-manager",
        "vault",
        "--vault-addr",
        vault.info.url,
        "--vault-timeout",
        "1s",
        "--vault-trust-bundle-refresh",
        "300ms",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
      ],
      { VAULT_TOKEN: vault.info.serverToken },
    );
    address = (await server.waitForEvent("server.started")).address as string;
    storeBoot = await bootstrapFromVault(vault.info, dir.path, "bookstore", "bookstore-v2");
    buyerBoot = await bootstrapFromVault(vault.info, dir.path, "bookbuyer", "bookbuyer");
    store = startAgent("bookstore", address, storeBoot, sock("store"), "bookstore", "bookstore-v2", [
      "--cert-validity",
      "1h",
    ]);
    buyer = startAgent("bookbuyer", address, buyerBoot, sock("buyer"), "bookbuyer", "bookbuyer", [
      "--cert-validity",
      "1h",
    ]);
    await Promise.all([store.waitForEvent("certificate.rotated"), buyer.waitForEvent("certificate.rotated")]);
  });

  after(async () => {
    await store?.stop();
    await buyer?.stop();
    await server?.stop();
    await vault?.proc.stop();
    await dir?.remove();
  });

  test("certificates issued through Vault chain to Vault's root and carry a real mTLS handshake", async () => {
    const a = await sdsSecrets(sock("store"));
    const b = await sdsSecrets(sock("buyer"));
    assert.equal(
      new X509Certificate(a.trustedCa).fingerprint256,
      new X509Certificate(vault.info.rootPem).fingerprint256,
    );
    await writeFile(join(dir.path, "leaf.pem"), a.chain);
    await writeFile(join(dir.path, "root.pem"), a.trustedCa);
    const verify = execFileSync(
      "openssl",
      ["verify", "-CAfile", join(dir.path, "root.pem"), join(dir.path, "leaf.pem")],
      {
        encoding: "utf8",
      },
    );
    assert.match(verify, /leaf\.pem: OK/);

    const tlsServer = createServer({
      cert: a.chain,
      key: a.key,
      ca: a.trustedCa,
      requestCert: true,
      rejectUnauthorized: true,
    });
    const seen = new Promise<string | undefined>((resolve, reject) => {
      tlsServer.once("secureConnection", (socket: TLSSocket) => {
        resolve(spiffeOf(socket.getPeerCertificate()));
        socket.end("hello\n");
      });
      tlsServer.once("tlsClientError", reject);
    });
    tlsServer.listen(0, "127.0.0.1");
    await once(tlsServer, "listening");
    try {
      const socket = connect({
        host: "127.0.0.1",
        port: (tlsServer.address() as { port: number }).port,
        cert: b.chain,
        key: b.key,
        ca: b.trustedCa,
        checkServerIdentity: (_h, cert) =>
          spiffeOf(cert) === "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"
            ? undefined
            : new Error("wrong peer"),
      });
      await once(socket, "secureConnect");
      assert.equal(
        spiffeOf(socket.getPeerCertificate()),
        "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2",
      );
      // TLS 1.3: the server checks the client's certificate after the client is done; wait for its verdict.
      assert.equal(await seen, "spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer");
      let reply = "";
      for await (const chunk of socket) reply += chunk;
      assert.equal(reply, "hello\n");
    } finally {
      tlsServer.close();
    }

    const requests = (await (await fetch(`${vault.info.control}/requests`)).json()) as {
      path: string;
      status: number;
    }[];
    assert.ok(
      requests.filter((r) => r.path === "/v1/pki/sign/openservicemesh" && r.status === 200).length >= 3,
    );
    assert.equal(
      requests.filter((r) => r.path.startsWith("/v1/pki/issue")).length,
      0,
      "issue/ is never called",
    );
  });

  test("the server's own serving certificate comes from Vault and names every --server-san, IPs included", async () => {
    const [host, port] = address.split(":");
    const socket = connect({
      host,
      port: Number(port),
      ca: vault.info.rootPem,
      servername: "localhost",
      ALPNProtocols: ["h2"],
    });
    await once(socket, "secureConnect");
    const peer = socket.getPeerX509Certificate();
    socket.destroy();
    assert.ok(peer);
    assert.ok(peer.verify(new X509Certificate(vault.info.rootPem).publicKey));
    assert.equal(
      peer.subjectAltName,
      "DNS:localhost, DNS:osm-cert.osm-system.svc, DNS:osm-cert.osm-system.svc.cluster.local, URI:spiffe://cluster.local/osm-cert/signing-server, IP Address:127.0.0.1",
    );
    // --serving-cert-validity (24h), within the role's max_ttl; the server renews at 2/3 of what it got.
    assert.ok(Date.parse(peer.validTo) - Date.now() <= 24 * 3_600_000 + 60_000);
  });

  test("error rows: each reaches the caller with its status and Vault's reason, and is logged with it", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const cn = "bookstore-v2.bookstore.cluster.local";
    const csr = encodePem(
      "CERTIFICATE REQUEST",
      createCsr({
        privateKey,
        commonName: cn,
        dnsNames: [cn],
        uris: ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"],
      }),
    );
    const { readFile } = await import("node:fs/promises");
    const boot: KeyedCert = {
      certPem: await readFile(join(storeBoot, "tls.crt"), "utf8"),
      keyPem: await readFile(join(storeBoot, "tls.key"), "utf8"),
    };
    const client = new TestSigningClient(address, vault.info.rootPem, boot);
    const attempt = () => statusOf(client.create(csr, 3_600_000));
    try {
      assert.deepEqual(await attempt(), { status: "OK", details: "" });

      await ctl("/policy", { name: "osm-cert", paths: {} });
      let r = await attempt();
      await ctl("/policy", { name: "osm-cert", paths: { "pki/sign/openservicemesh": ["update"] } });
      assert.equal(r.status, "PERMISSION_DENIED");
      assert.match(r.details, /permission denied.*"update" on pki\/sign\/openservicemesh/);

      await ctl("/role", {
        name: "openservicemesh",
        role: {
          allowed_domains: ["example.com"],
          allow_subdomains: true,
          key_type: "any",
          allowed_uri_sans: ["spiffe://cluster.local/*"],
          use_csr_common_name: false,
          use_csr_sans: false,
        },
      });
      r = await attempt();
      assert.equal(r.status, "FAILED_PRECONDITION");
      assert.match(r.details, /common name bookstore-v2\.bookstore\.cluster\.local not allowed by this role/);
      await ctl("/role", {
        name: "openservicemesh",
        role: {
          allowed_domains: ["cluster.local", "osm-cert.osm-system.svc"],
          allow_subdomains: true,
          allow_bare_domains: true,
          allowed_uri_sans: ["spiffe://cluster.local/*"],
          key_type: "any",
          max_ttl: "24h",
          use_csr_common_name: false,
          use_csr_sans: false,
        },
      });

      await ctl("/seal");
      r = await attempt();
      await ctl("/unseal");
      assert.equal(r.status, "UNAVAILABLE");
      assert.match(r.details, /Vault is sealed/);

      for (const status of [502, 429]) {
        await ctl("/fail", { count: 3, status, pathPrefix: "pki/sign" });
        r = await attempt();
        assert.equal(r.status, "UNAVAILABLE", `HTTP ${status}`);
        assert.match(r.details, new RegExp(`HTTP ${status}`));
        await ctl("/clear");
      }

      await ctl("/standby", { of: null });
      r = await attempt();
      await ctl("/standby", {});
      assert.equal(r.status, "UNAVAILABLE");
      assert.match(r.details, /local node not active but active cluster node not found/);

      await ctl("/latency", { ms: 1_500 });
      const started = Date.now();
      r = await attempt();
      await ctl("/clear");
      assert.equal(r.status, "UNAVAILABLE");
      assert.match(r.details, /no answer within 1000 ms/);
      assert.ok(Date.now() - started < 8_000);

      // One dropped connection and one 503 are retried and never reach the caller.
      await ctl("/drop", { count: 1, pathPrefix: "pki/sign" });
      await ctl("/fail", { count: 1, status: 503, pathPrefix: "pki/sign" });
      assert.equal((await attempt()).status, "OK");
    } finally {
      client.close();
      await ctl("/clear");
    }
    const refusals = server.lines.filter((l) => l.event === "vault.refused");
    for (const reason of [
      "permission denied",
      "not allowed by this role",
      "Vault is sealed",
      "local node not active",
    ]) {
      assert.ok(
        refusals.some((l) => (l.errors as string[]).some((e) => e.includes(reason))),
        `logged with Vault's reason: ${reason}`,
      );
    }
  });

  test("an agent keeps serving through a sealed Vault and renews after unseal", async () => {
    const agent = startAgent("sealed", address, storeBoot, sock("sealed"), "bookstore", "bookstore-v2", [
      "--cert-validity",
      "8s",
    ]);
    try {
      await agent.waitForEvent("certificate.rotated");
      const first = new X509Certificate((await sdsSecrets(sock("sealed"))).chain);
      await ctl("/seal");
      await agent.waitFor(
        (l) => l.event === "certificate.request_failed" && l.status === "UNAVAILABLE",
        20_000,
        "a failed renewal",
      );
      const during = new X509Certificate((await sdsSecrets(sock("sealed"))).chain);
      assert.equal(during.serialNumber, first.serialNumber, "the valid certificate is still served");
      assert.ok(Date.parse(during.validTo) > Date.now());
      const admin = (agent.lines.find((l) => l.event === "agent.started")?.admin ?? "") as string;
      assert.equal((await fetch(`http://${admin}/readyz`)).status, 200);
      await ctl("/unseal");
      await waitUntil("a renewal after unseal", async () => {
        const now = new X509Certificate((await sdsSecrets(sock("sealed"))).chain);
        return now.serialNumber !== first.serialNumber;
      });
    } finally {
      await ctl("/unseal");
      await agent.stop();
    }
  });

  test("a CA rotation in Vault reaches Envoy's ROOTCA through WatchTrustBundle", async () => {
    const { rootPem } = (await ctl("/rotate")) as { rootPem: string };
    await server.waitForEvent("vault.trust_bundle.changed");
    await waitUntil("ROOTCA holds the new root", async () => {
      const { trustedCa } = await sdsSecrets(sock("store"));
      return trustedCa.includes(rootPem.trim().split("\n")[1] as string);
    });
    const { trustedCa } = await sdsSecrets(sock("store"));
    assert.equal(
      (trustedCa.match(/BEGIN CERTIFICATE/g) ?? []).length,
      2,
      "old and new root while old leaves live",
    );
  });
});

describe("Vault mode: start-up", { timeout: 60_000 }, () => {
  test("bad flags exit 2 naming the flag; an unusable token or Vault exits 1 with the reason", async () => {
    const vault = await startFakeVault();
    try {
      const base = [
        "server",
        "--certificate-manager",
        "vault",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
      ];
      const noToken = await runCli([...base, "--vault-addr", vault.info.url], { VAULT_TOKEN: "" });
      assert.equal(noToken.code, 2);
      assert.match(noToken.stderr, /needs a token: --vault-token/);
      const both = await runCli([
        ...base,
        "--vault-addr",
        vault.info.url,
        "--vault-host",
        "h",
        "--vault-token",
        "t",
      ]);
      assert.equal(both.code, 2);
      assert.match(
        both.stderr.split("\n")[0] as string,
        /--vault-addr \(VAULT_ADDR\) and --vault-host\/--vault-port are alternatives/,
      );

      const invalid = await runCli([...base, "--vault-addr", vault.info.url], { VAULT_TOKEN: "hvs.nope" });
      assert.equal(invalid.code, 1);
      assert.match(invalid.stderr, /lookup-self \(permission denied\): it is invalid, expired or revoked/);

      const weak = (await (
        await fetch(`${vault.info.control}/token`, { method: "POST", body: JSON.stringify({ ttl: "1h" }) })
      ).json()) as { token: string };
      const lacking = await runCli([...base, "--vault-addr", vault.info.url], { VAULT_TOKEN: weak.token });
      assert.equal(lacking.code, 1);
      assert.match(lacking.stderr, /lacks "update" on pki\/sign\/openservicemesh/);

      const unreachable = await runCli(
        [...base, "--vault-addr", "http://127.0.0.1:1", "--vault-timeout", "500ms"],
        { VAULT_TOKEN: "t" },
      );
      assert.equal(unreachable.code, 1);
      assert.match(
        unreachable.stderr,
        /Vault at http:\/\/127\.0\.0\.1:1: Vault GET \/v1\/auth\/token\/lookup-self: .*ECONNREFUSED/,
      );
    } finally {
      await vault.proc.stop();
    }
  });
});

describe("Vault mode: the demo", { timeout: 90_000 }, () => {
  test("osm-cert demo --certificate-manager vault runs the whole flow against the fake Vault", async () => {
    const result = await runCli(["demo", "--certificate-manager", "vault", "--cert-validity", "6s"]);
    assert.equal(result.code, 0, result.stderr);
    const text = result.lines.map((l) => l.msg ?? "").join("\n");
    assert.match(text, /signing server \(Vault at http:\/\/127\.0\.0\.1:\d+, root key in Vault\)/);
    assert.match(text, /ROOTCA = CN=Vault Root CA/);
    assert.match(
      text,
      /mTLS TLSv1\.3 .*bookbuyer -> spiffe:\/\/cluster\.local\/ns\/bookstore\/sa\/bookstore-v2/,
    );
    assert.match(text, /Demo passed/);
  });
});
