// The cfssl reference of DESIGN.md §12: Debian's `golang-cfssl` (`cfssl serve`) signing the same
// CSRs as our server, with an ECDSA P-256 CA made at run time by cfssl itself, a signing profile
// like our service profile, and TLS with client certificates like ours. Its HTTP API is driven by
// bench/loadgen.ts (mode cfssl), in its own process, so both servers are measured the same way.
// Missing cfssl is installed with apt-get when the bench runs as root (ensureCfssl); otherwise the
// bench says so and goes on.

import { execFileSync, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";

export function cfsslInstalled(): boolean {
  return spawnSync("cfssl", ["version"], { stdio: "ignore" }).status === 0;
}

/** cfssl on the PATH: Debian's golang-cfssl installed if missing and we may (root). */
export function ensureCfssl(): boolean {
  if (cfsslInstalled()) return true;
  if (process.getuid?.() !== 0) return false;
  console.log("installing golang-cfssl (apt-get) for the cfssl reference…");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  spawnSync("apt-get", ["update"], { stdio: "ignore", env });
  spawnSync("apt-get", ["install", "-y", "golang-cfssl"], { stdio: "ignore", env });
  return cfsslInstalled();
}

export function cfsslVersion(): string {
  const out = execFileSync("cfssl", ["version"], { encoding: "utf8" });
  return out.replace(/\s+/g, " ").trim();
}

// Our service profile: leaf, digitalSignature + keyEncipherment, serverAuth + clientAuth, 24h.
const CONFIG = {
  signing: {
    default: {
      expiry: "24h",
      usages: ["digital signature", "key encipherment", "server auth", "client auth"],
    },
  },
};

interface IssuedPair {
  cert: string;
  key: string;
}

function gencert(dir: string, args: readonly string[], request: object): IssuedPair {
  const csrJson = join(dir, `req-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(csrJson, JSON.stringify(request));
  const out = execFileSync("cfssl", ["gencert", ...args, csrJson], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  });
  const parsed = JSON.parse(out) as { cert: string; key: string };
  return { cert: parsed.cert, key: parsed.key };
}

export interface CfsslPki {
  readonly caPem: string;
  readonly caFile: string;
  readonly caKeyFile: string;
  readonly configFile: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
  readonly client: IssuedPair;
}

/** An ECDSA P-256 root made by cfssl, a TLS serving cert for 127.0.0.1 and a client cert, in `dir`. */
export function makeCfsslPki(dir: string): CfsslPki {
  const ca = gencert(dir, ["-initca"], { CN: "osm.root", key: { algo: "ecdsa", size: 256 } });
  const caFile = join(dir, "ca.pem");
  const caKeyFile = join(dir, "ca-key.pem");
  writeFileSync(caFile, ca.cert);
  writeFileSync(caKeyFile, ca.key, { mode: 0o600 });
  const configFile = join(dir, "config.json");
  writeFileSync(configFile, JSON.stringify(CONFIG));
  const common = ["-ca", caFile, "-ca-key", caKeyFile, "-config", configFile];
  const server = gencert(dir, [...common, "-hostname", "localhost,127.0.0.1"], {
    CN: "cfssl",
    key: { algo: "ecdsa", size: 256 },
  });
  const serverCertFile = join(dir, "server.pem");
  const serverKeyFile = join(dir, "server-key.pem");
  writeFileSync(serverCertFile, server.cert);
  writeFileSync(serverKeyFile, server.key, { mode: 0o600 });
  const client = gencert(dir, [...common, "-hostname", "bench.bench.cluster.local"], {
    CN: "bench.bench.cluster.local",
    key: { algo: "ecdsa", size: 256 },
  });
  return { caPem: ca.cert, caFile, caKeyFile, configFile, serverCertFile, serverKeyFile, client };
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  server.close();
  await once(server, "close");
  return port;
}

export interface RunningCfssl {
  readonly pid: number;
  readonly address: string;
  stop(): Promise<void>;
}

/** `cfssl serve` on a free loopback port, pinned with `taskset` when `pin` names a CPU list. */
export async function startCfssl(
  pki: CfsslPki,
  options: { tls: boolean; pin?: string },
): Promise<RunningCfssl> {
  const port = await freePort();
  const args = [
    "serve",
    "-address",
    "127.0.0.1",
    "-port",
    String(port),
    "-ca",
    pki.caFile,
    "-ca-key",
    pki.caKeyFile,
    "-config",
    pki.configFile,
    ...(options.tls
      ? ["-tls-cert", pki.serverCertFile, "-tls-key", pki.serverKeyFile, "-mutual-tls-ca", pki.caFile]
      : []),
  ];
  const child =
    options.pin === undefined
      ? spawn("cfssl", args, { stdio: ["ignore", "ignore", "pipe"] })
      : spawn("taskset", ["-c", options.pin, "cfssl", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cfssl serve did not start: ${stderr}`)), 15_000);
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      // Keep only the start-up lines; after that, cfssl's per-request log is drained unread.
      if (stderr.length < 64 * 1024) stderr += chunk;
      if (stderr.includes("Now listening")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`cfssl serve exited with ${code}: ${stderr}`));
    });
  });
  return {
    pid: child.pid as number,
    address: `127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        await once(child, "exit");
      }
    },
  };
}
