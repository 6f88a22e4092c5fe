// `osm-cert demo`: the whole flow on one machine, with the real processes. A signing server on a
// fresh CA directory, bootstrap certs for two workloads, two agents, an Envoy-like SDS client per
// agent, a real mTLS handshake between the workloads with the served certs, and one rotation
// arriving on an open SDS stream. Exits 0 with a report, or 1 with the reason.

import { spawn } from "node:child_process";
import { randomUUID, X509Certificate } from "node:crypto";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, createServer, type TLSSocket } from "node:tls";
import { formatDuration } from "../common/duration.js";
import { type FlagTable, parseFlags } from "../common/flags.js";
import { bootstrapCommonName, makeIdentity } from "../common/identity.js";
import { generateKeyPair, privateKeyToPem } from "../common/keys.js";
import { encodePem } from "../common/pem.js";
import { createCsr } from "../common/x509/csr.js";
import { CliProcess, startCli } from "./child-process.js";
import { type SdsSecret, SdsWatch } from "./sds-client.js";

const DEMO_FLAGS = {
  "cert-validity": {
    kind: "duration",
    help: "validity the agents ask for (short, to show a rotation)",
    default: "10s",
  },
  "keep-dir": { kind: "boolean", help: "keep the temporary directory (CA, logs) for inspection" },
  "certificate-manager": {
    kind: "string",
    help: "tresor, or vault (the fake Vault from test/fakes unless --vault-addr names a real one)",
    default: "tresor",
    choices: ["tresor", "vault"],
  },
  "vault-addr": {
    kind: "string",
    help: "a real Vault set up as the README says (roles openservicemesh and osm-bootstrap); needs --vault-token",
  },
  "vault-token": {
    kind: "string",
    help: "token for a real Vault: update on pki/sign/openservicemesh and pki/sign/osm-bootstrap",
    env: "VAULT_TOKEN",
  },
} as const satisfies FlagTable;

interface DemoVault {
  readonly addr: string;
  readonly serverToken: string;
  readonly bootstrapToken: string;
  readonly caPem: string;
}

/** The fake Vault process, built from test/fakes into dist/ by `npm run build`. */
async function startFakeVault(children: CliProcess[]): Promise<DemoVault> {
  const path = new URL("../test/fakes/vault-process.js", import.meta.url);
  if (!existsSync(path))
    throw new Error("the Vault demo needs the fake Vault: run `npm run build` in a checkout");
  const proc = new CliProcess(
    spawn(process.execPath, [path.pathname], { stdio: ["ignore", "pipe", "pipe"] }),
    "fake vault",
  );
  children.push(proc);
  const info = await proc.waitForEvent("fake.started", 15_000);
  return {
    addr: String(info.url),
    serverToken: String(info.serverToken),
    bootstrapToken: String(info.rootToken),
    caPem: String(info.rootPem),
  };
}

/** What the injector (or an operator) does in Vault mode: Vault signs the pod's xDS bootstrap CSR. */
async function bootstrapFromVault(vault: DemoVault, out: string, namespace: string, serviceAccount: string) {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const cn = bootstrapCommonName(randomUUID(), makeIdentity(serviceAccount, namespace));
  const csr = encodePem("CERTIFICATE REQUEST", createCsr({ privateKey, commonName: cn }));
  const res = await fetch(`${vault.addr}/v1/pki/sign/osm-bootstrap`, {
    method: "POST",
    headers: { "x-vault-token": vault.bootstrapToken },
    body: JSON.stringify({ csr, common_name: cn, ttl: "8760h", exclude_cn_from_sans: true }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = (await res.json()) as { data?: { certificate?: string }; errors?: string[] };
  if (res.status !== 200 || body.data?.certificate === undefined) {
    throw new Error(
      `Vault refused the bootstrap certificate: HTTP ${res.status} ${JSON.stringify(body.errors ?? [])}`,
    );
  }
  await mkdir(out, { recursive: true, mode: 0o700 });
  await writeFile(join(out, "tls.crt"), `${body.data.certificate.trim()}\n`);
  await writeFile(join(out, "tls.key"), privateKeyToPem(privateKey), { mode: 0o600 });
  await writeFile(join(out, "ca.crt"), vault.caPem);
}

const WORKLOADS = [
  { name: "bookbuyer", namespace: "bookbuyer", serviceAccount: "bookbuyer" },
  { name: "bookstore", namespace: "bookstore", serviceAccount: "bookstore-v2" },
] as const;

function spiffeOf(cert: X509Certificate): string {
  return /URI:(spiffe:\/\/[^,\s]+)/.exec(cert.subjectAltName ?? "")?.[1] ?? "(none)";
}

/** One TLS connection between two workloads using exactly the secrets their agents served. */
async function mtlsHandshake(
  server: SdsSecret & { trustedCa: string },
  client: SdsSecret & { trustedCa: string },
  expectServerId: string,
  expectClientId: string,
) {
  const tlsServer = createServer({
    cert: server.certificateChain,
    key: server.privateKey,
    ca: server.trustedCa,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: "TLSv1.3",
  });
  const seenByServer = new Promise<string>((resolve, reject) => {
    tlsServer.once("secureConnection", (socket: TLSSocket) => {
      const peer = new X509Certificate(socket.getPeerX509Certificate()?.raw ?? Buffer.alloc(0));
      const id = spiffeOf(peer);
      if (id !== expectClientId) reject(new Error(`server side saw ${id}, expected ${expectClientId}`));
      socket.end(`hello ${id}\n`);
      resolve(id);
    });
    tlsServer.once("tlsClientError", reject);
  });
  tlsServer.listen(0, "127.0.0.1");
  await once(tlsServer, "listening");
  const port = (tlsServer.address() as { port: number }).port;
  try {
    const socket = connect({
      host: "127.0.0.1",
      port,
      cert: client.certificateChain,
      key: client.privateKey,
      ca: client.trustedCa,
      // Mesh peers are named by SPIFFE ID, not by host name: check that instead.
      checkServerIdentity: (_host, cert) => {
        const id = /URI:(spiffe:\/\/[^,\s]+)/.exec(cert.subjectaltname ?? "")?.[1];
        return id === expectServerId
          ? undefined
          : new Error(`client side saw ${id}, expected ${expectServerId}`);
      },
    });
    await once(socket, "secureConnect");
    const serverId = spiffeOf(new X509Certificate(socket.getPeerX509Certificate()?.raw ?? Buffer.alloc(0)));
    let reply = "";
    socket.setEncoding("utf8").on("data", (d: string) => {
      reply += d;
    });
    const protocol = socket.getProtocol();
    const cipher = socket.getCipher().name;
    await once(socket, "end");
    socket.destroy();
    return { serverId, clientId: await seenByServer, protocol, cipher, reply: reply.trim() };
  } finally {
    tlsServer.close();
  }
}

export async function demoCommand(argv: readonly string[]): Promise<void> {
  const flags = parseFlags("demo", DEMO_FLAGS, argv);
  const dir = await mkdtemp(join(tmpdir(), "osm-cert-demo-"));
  const children: CliProcess[] = [];
  const watches: SdsWatch[] = [];
  const report: string[] = [];
  const started = Date.now();
  const say = (line: string) => {
    report.push(line);
    process.stdout.write(`${line}\n`);
  };
  try {
    say(`osm-cert demo (working directory ${dir})`);
    const caDir = join(dir, "ca");
    let vault: DemoVault | null = null;
    if (flags["certificate-manager"] === "vault") {
      if (flags["vault-addr"] !== undefined) {
        const token = flags["vault-token"] ?? "";
        const chain = await fetch(`${flags["vault-addr"]}/v1/pki/ca_chain`, {
          signal: AbortSignal.timeout(10_000),
        });
        vault = {
          addr: flags["vault-addr"],
          serverToken: token,
          bootstrapToken: token,
          caPem: await chain.text(),
        };
      } else {
        vault = await startFakeVault(children);
      }
    }
    const server = startCli(
      "server",
      [
        "server",
        ...(vault === null
          ? ["--ca-dir", caDir]
          : ["--certificate-manager", "vault", "--vault-addr", vault.addr]),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
      ],
      vault === null ? {} : { VAULT_TOKEN: vault.serverToken },
    );
    children.push(server);
    const serverUp = await server.waitForEvent("server.started", 15_000);
    say(
      vault === null
        ? `1. signing server (Tresor, new root in ${caDir}) listening on ${serverUp.address}`
        : `1. signing server (Vault at ${vault.addr}, root key in Vault) listening on ${serverUp.address}`,
    );

    const agents = [];
    for (const w of WORKLOADS) {
      const out = join(dir, `${w.name}-bootstrap`);
      if (vault !== null) await bootstrapFromVault(vault, out, w.namespace, w.serviceAccount);
      else {
        const issue = startCli(`issue ${w.name}`, [
          "issue",
          "bootstrap",
          "--namespace",
          w.namespace,
          "--service-account",
          w.serviceAccount,
          "--ca-dir",
          caDir,
          "--out",
          out,
        ]);
        if ((await issue.exited).code !== 0)
          throw new Error(`issue bootstrap for ${w.name} failed: ${issue.stderr.trim()}`);
      }
      const socket = join(dir, `${w.name}.sock`);
      const agent = startCli(`agent ${w.name}`, [
        "agent",
        "--server",
        String(serverUp.address),
        "--ca-bundle",
        join(out, "ca.crt"),
        "--namespace",
        w.namespace,
        "--service-account",
        w.serviceAccount,
        "--bootstrap-cert",
        join(out, "tls.crt"),
        "--bootstrap-key",
        join(out, "tls.key"),
        "--sds-socket",
        socket,
        "--cert-validity",
        formatDuration(flags["cert-validity"]),
        "--admin-listen",
        "127.0.0.1:0",
      ]);
      children.push(agent);
      await agent.waitForEvent("agent.started", 15_000);
      agents.push({ ...w, socket, agent });
    }
    say(
      `2. bootstrap certs issued; agents started for ${WORKLOADS.map((w) => `${w.serviceAccount}.${w.namespace}`).join(" and ")}`,
    );

    const served = [];
    for (const a of agents) {
      const watch = new SdsWatch(a.socket, ["default", "ROOTCA"]);
      watches.push(watch);
      const first = await watch.nextUpdate(20_000);
      const cert = first.get("default");
      const root = first.get("ROOTCA");
      if (
        cert?.certificateChain === undefined ||
        cert.privateKey === undefined ||
        root?.trustedCa === undefined
      ) {
        throw new Error(`agent ${a.name} did not serve both default and ROOTCA`);
      }
      const leaf = new X509Certificate(cert.certificateChain);
      say(
        `3. SDS ${a.name}: default = ${spiffeOf(leaf)} serial ${leaf.serialNumber} valid until ${leaf.validTo}; ROOTCA = ${new X509Certificate(root.trustedCa).subject.replace(/\n/g, ",")}`,
      );
      served.push({ ...a, cert: { ...cert, trustedCa: root.trustedCa }, leaf, watch });
    }

    const [buyer, store] = served as [(typeof served)[0], (typeof served)[0]];
    const handshake = await mtlsHandshake(store.cert, buyer.cert, spiffeOf(store.leaf), spiffeOf(buyer.leaf));
    say(
      `4. mTLS ${handshake.protocol} ${handshake.cipher}: ${handshake.clientId} -> ${handshake.serverId}, reply "${handshake.reply}"`,
    );

    const before = store.leaf.serialNumber;
    const rotationStart = Date.now();
    let rotated: X509Certificate | undefined;
    while (rotated === undefined) {
      const update = await store.watch.nextUpdate(flags["cert-validity"] + 15_000);
      const chain = update.get("default")?.certificateChain;
      if (chain !== undefined && new X509Certificate(chain).serialNumber !== before)
        rotated = new X509Certificate(chain);
    }
    say(
      `5. rotation pushed on the open SDS stream after ${((Date.now() - rotationStart) / 1000).toFixed(1)} s: serial ${before} -> ${rotated.serialNumber}`,
    );

    for (const watch of watches) watch.close();
    watches.length = 0;
    for (const child of children.reverse()) {
      const { code } = await child.stop("SIGTERM");
      if (code !== 0)
        throw new Error(`${child.name} exited with code ${code} on SIGTERM: ${child.stderr.trim()}`);
    }
    for (const a of agents) {
      const left = await stat(a.socket).then(
        () => true,
        () => false,
      );
      if (left) throw new Error(`agent ${a.name} left its SDS socket behind`);
    }
    children.length = 0;
    say(
      `6. all processes stopped cleanly; SDS sockets removed. Demo passed in ${((Date.now() - started) / 1000).toFixed(1)} s.`,
    );
  } finally {
    for (const watch of watches) watch.close();
    for (const child of children) child.child.kill("SIGKILL");
    if (!flags["keep-dir"]) await rm(dir, { recursive: true, force: true });
  }
}
