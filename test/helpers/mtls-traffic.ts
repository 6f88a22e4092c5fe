// Two workloads that talk mTLS with exactly the secrets their agents serve over SDS (issue 9's
// Done-when): an SDS client per agent that follows its stream like Envoy, a TLS listener per
// workload presenting its served cert, and a loop making a fresh handshake both ways every 50 ms.

import assert from "node:assert/strict";
import { createHash, X509Certificate } from "node:crypto";
import { connect, createSecureContext, createServer, type SecureContext, type Server } from "node:tls";
import { decodeCertificates } from "../../common/pem.js";
import { connectSds, decodeSecrets, SdsStream } from "./envoy-sds-client.js";

export interface Served {
  cert: string;
  key: string;
  rootca: string;
}

/** Follows one agent's SDS stream like Envoy: ACKs every response, keeps the latest secrets. */
export class Workload {
  readonly stream: SdsStream;
  served: Served | null = null;
  readonly rootcaSeen: string[] = [];
  readonly serialsSeen = new Set<string>();
  private seen = 0;
  private stopped = false;

  constructor(
    readonly name: string,
    socket: string,
  ) {
    this.stream = new SdsStream(connectSds(socket));
    this.stream.request(["default", "ROOTCA"]);
    void this.follow();
  }

  private async follow(): Promise<void> {
    while (!this.stopped) {
      const response = await this.stream.next(this.seen, 1_000).catch(() => null);
      if (response === null) continue;
      this.seen += 1;
      const secrets = new Map(decodeSecrets(response).map((s) => [s.name, s]));
      const cert = secrets.get("default")?.certificateChain ?? this.served?.cert;
      const key = secrets.get("default")?.privateKey ?? this.served?.key;
      const rootca = secrets.get("ROOTCA")?.trustedCa ?? this.served?.rootca;
      if (cert && key && rootca) {
        this.served = { cert, key, rootca };
        if (this.rootcaSeen.at(-1) !== rootca) this.rootcaSeen.push(rootca);
        this.serialsSeen.add(new X509Certificate(cert).serialNumber);
      }
      this.stream.request(["default", "ROOTCA"], { version: response.version_info, nonce: response.nonce });
    }
  }

  stop(): void {
    this.stopped = true;
    this.stream.end();
  }
}

export function fingerprints(pem: string): string[] {
  return decodeCertificates(pem).map((der) => createHash("sha256").update(der).digest("hex"));
}

/** A TLS server presenting `w`'s served cert, requiring a client cert chained to w's ROOTCA. */
export class Listener {
  readonly server: Server;
  private context: SecureContext | null = null;
  private current: Served | null = null;
  port = 0;

  constructor(private readonly w: Workload) {
    this.server = createServer(
      {
        requestCert: true,
        rejectUnauthorized: true,
        SNICallback: (_n, cb) => cb(null, this.secureContext()),
      },
      (socket) => {
        socket.end("ok");
      },
    );
    this.server.on("tlsClientError", () => {});
  }

  private secureContext(): SecureContext {
    const served = this.w.served as Served;
    if (served !== this.current) {
      this.current = served;
      this.context = createSecureContext({ cert: served.cert, key: served.key, ca: served.rootca });
    }
    return this.context as SecureContext;
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as { port: number }).port;
  }
}

/** One fresh mTLS connection from `client` to `to`; resolves with an error message or null. */
export function handshake(client: Workload, to: Listener): Promise<string | null> {
  const served = client.served as Served;
  return new Promise((resolve) => {
    const socket = connect({
      host: "127.0.0.1",
      port: to.port,
      servername: "workload.mesh",
      cert: served.cert,
      key: served.key,
      ca: served.rootca,
      // Workload certs name SPIFFE IDs, not host names; trust is the chain to ROOTCA here.
      checkServerIdentity: () => undefined,
    });
    let data = "";
    const timer = setTimeout(() => finish("timeout"), 5_000);
    const finish = (error: string | null) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(error);
    };
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      data += chunk;
    });
    socket.on("end", () => finish(data === "ok" ? null : `server closed without ok (${data})`));
    socket.on("error", (error) => finish(error.message));
  });
}

/** Handshakes a → b and b → a in turn every `gapMs` until stopped; failures are kept with a time. */
export class Traffic {
  readonly failures: string[] = [];
  handshakes = 0;
  private on = true;
  private readonly running: Promise<void>;

  constructor(
    readonly pairs: readonly [Workload, Listener, Workload, Listener],
    gapMs = 50,
  ) {
    const [a, la, b, lb] = pairs;
    this.running = (async () => {
      let flip = false;
      while (this.on) {
        flip = !flip;
        const [from, to] = flip ? [a, lb] : [b, la];
        const error = await handshake(from, to);
        this.handshakes += 1;
        if (error !== null) this.failures.push(`${new Date().toISOString()} ${from.name}: ${error}`);
        await new Promise((r) => setTimeout(r, gapMs));
      }
    })();
  }

  async stop(): Promise<void> {
    this.on = false;
    await this.running;
  }
}

/**
 * Once every workload holds its first secrets (10 s at most): a Listener for each, and Traffic
 * between the first two. Listeners go into `listeners` as they open, so that the caller's after()
 * closes them even when this fails.
 */
export async function startTraffic(workloads: readonly Workload[], listeners: Listener[]): Promise<Traffic> {
  const deadline = Date.now() + 10_000;
  while (workloads.some((w) => w.served === null)) {
    assert.ok(Date.now() < deadline, "SDS clients got their first secrets");
    await new Promise((r) => setTimeout(r, 50));
  }
  for (const w of workloads) {
    const l = new Listener(w);
    await l.listen();
    listeners.push(l);
  }
  const [a, b] = workloads as [Workload, Workload];
  const [la, lb] = listeners as [Listener, Listener];
  return new Traffic([a, la, b, lb]);
}

/** Waits (10 s at most) until no workload's served ROOTCA holds the root `fingerprint`. */
export async function untilNoWorkloadTrusts(
  workloads: readonly Workload[],
  fingerprint: string,
): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (workloads.some((w) => fingerprints(w.served?.rootca ?? "").includes(fingerprint))) {
    assert.ok(Date.now() < deadline, "ROOTCA without the old root reached both SDS clients");
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * After a root rotation: `w`'s one SDS stream never broke, its ROOTCA went old → old+new → new,
 * and its default certificate changed on that stream.
 */
export function assertFollowedOnOpenStream(w: Workload): void {
  assert.equal(w.stream.error, undefined, `${w.name}: the SDS stream never broke`);
  const shapes = w.rootcaSeen.map((pem) => fingerprints(pem).length);
  assert.deepEqual(shapes.slice(0, 3), [1, 2, 1], `${w.name}: ROOTCA went old → old+new → new`);
  assert.ok(w.serialsSeen.size >= 2, `${w.name}: default changed on the open stream`);
}

/** Stops the traffic, then the workloads' SDS streams and listeners (for an after() hook). */
export async function stopTraffic(
  traffic: Traffic | null,
  workloads: readonly Workload[],
  listeners: readonly Listener[],
): Promise<void> {
  await traffic?.stop();
  for (const w of workloads) w.stop();
  for (const l of listeners) l.server.close();
}

/** The certificate a signing server at `address` (host:port) presents to a new gRPC (h2) connection. */
export function servingCertificate(address: string): Promise<X509Certificate> {
  return new Promise<X509Certificate>((resolve, reject) => {
    const [host, port] = address.split(":") as [string, string];
    const socket = connect(
      { host, port: Number(port), rejectUnauthorized: false, ALPNProtocols: ["h2"] },
      () => {
        const peer = socket.getPeerX509Certificate();
        socket.destroy();
        if (peer === undefined) reject(new Error("no serving certificate"));
        else resolve(peer);
      },
    );
    socket.on("error", reject);
  });
}
