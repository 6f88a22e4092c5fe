// The signing server's figures (issue 12): 1 CSRs/s per core against the openssl floor, 2 every
// core against cfssl, 3 the 10,000-pod storm on first contact (bootstrap certificates and tokens),
// 7 RSS and the CPU split per CSR from a --cpu-prof profile.

import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { bootstrapCommonName, makeIdentity, serviceCommonName, spiffeId } from "../common/identity.js";
import { generateKeyPair, privateKeyToPem } from "../common/keys.js";
import { encodePem } from "../common/pem.js";
import { createCsr, parseCsrDer } from "../common/x509/csr.js";
import type { TresorProvider } from "../server/providers/tresor/tresor.js";
import { FakeKubeApiServer } from "../test/fakes/kube-apiserver.js";
import { issueWithCa, openTestCa } from "../test/helpers/pki.js";
import { ensureCfssl, makeCfsslPki, startCfssl } from "./cfssl.js";
import type { PooledConfig, StormConfig } from "./loadgen.js";
import {
  type Figure,
  median,
  opensslFloor,
  rssMbOfAll,
  runLoad,
  sleep,
  spawnJsonLines,
  spread,
  startServer,
} from "./measure.js";

export interface ServerBenchOptions {
  readonly dir: string;
  readonly runs: number;
  readonly seconds: number;
  /**
   * Seconds of load before a pooled measurement starts. V8 is still compiling the hot path for
   * the first ≈ 10 s of load on one core (perf: 20 % of the server's CPU in its compiler threads,
   * and the main thread in baseline code); measured from 1.5 s, CPU per CSR came out ≈ 2 × the
   * steady state a server that runs for days has.
   */
  readonly warmupSeconds: number;
  readonly stormPods: number;
  readonly stormWindow: number;
  /** Which credential kinds the storm runs (both by default). */
  readonly stormModes?: readonly ("bootstrap" | "token")[];
  /** --workers of the storm's server ("2" by default, the chart's two replicas on one address). */
  readonly stormWorkers?: string;
  /** Profile the storm's server (--cpu-prof) and print the CPU split of a first contact. */
  readonly stormProfile?: boolean;
}

const identity = makeIdentity("bench", "bench");
const CN = serviceCommonName(identity, "cluster.local");
const SPIFFE = spiffeId(identity, "cluster.local");
const KEYS = 64;

const pct = (x: number) => `${(x * 100).toFixed(0)} %`;
const perSecond = (x: number) => `${x.toFixed(0)}/s`;
const times = (x: number) => `${x.toFixed(2)} ×`;
const microseconds = (seconds: number) => `${(seconds * 1e6).toFixed(0)} µs`;
const SIGNING_CORE = fileURLToPath(new URL("./signing-core.js", import.meta.url));

const TRANSPORT_REFERENCE = fileURLToPath(new URL("./transport-reference.js", import.meta.url));

/** The files bench/transport-reference.ts serves with: a server certificate for localhost and the root. */
async function transportFiles(s: Setup, dir: string): Promise<string[]> {
  const files = ["reference.crt", "reference.key", "reference-ca.crt"].map((name) => join(dir, name));
  const [certFile, keyFile, caFile] = files as [string, string, string];
  const served = await issueWithCa(s.ca, "server", { commonName: "localhost", dnsNames: ["localhost"] });
  writeFileSync(certFile, served.certPem);
  writeFileSync(keyFile, served.keyPem, { mode: 0o600 });
  writeFileSync(caFile, s.rootPem);
  return files;
}

/** Server CPU-seconds per call of a transport reference under figure 1's load, on the same pinned CPU. */
async function transportCallCost(
  o: ServerBenchOptions,
  s: Setup,
  files: readonly string[],
  mode: "http2" | "grpc-js",
): Promise<number> {
  const server = spawnJsonLines(process.execPath, [TRANSPORT_REFERENCE, mode, ...files], { pin: "0" });
  try {
    const started = await server.next("server.started", 30_000);
    const pid = server.child.pid as number;
    const load = await runLoad(o.dir, pooled(s, String(started.address), o, 8), [pid], "1");
    if (load.result.errors > 0 || load.result.ok === 0) {
      throw new Error(
        `transport reference ${mode}: ${load.result.errors} errors: ${load.result.errorSamples.join(" | ")}`,
      );
    }
    return load.serverCpuSeconds / load.result.ok;
  } finally {
    await server.stop();
  }
}

/** Figure 1's ceilings without a transport (bench/signing-core.ts), per CPU-second, on `pin`. */
async function signingCore(caDir: string, pin: string): Promise<{ crypto: number; core: number }> {
  const child = spawnJsonLines(process.execPath, [SIGNING_CORE, caDir, "3"], { pin });
  try {
    const line = await child.next("signing-core", 60_000);
    return { crypto: line.crypto as number, core: line.core as number };
  } finally {
    await child.stop();
  }
}

interface Setup {
  readonly caDir: string;
  readonly ca: TresorProvider;
  readonly rootPem: string;
  readonly keys: Awaited<ReturnType<typeof generateKeyPair>>["privateKey"][];
  readonly csrs: string[];
  readonly client: { certPem: string; keyPem: string };
}

let setup: Setup | undefined;

async function prepare(dir: string): Promise<Setup> {
  if (setup !== undefined) return setup;
  const caDir = join(dir, "ca");
  const ca = await openTestCa(caDir);
  const keys: Setup["keys"] = [];
  for (let i = 0; i < KEYS; i++) keys.push((await generateKeyPair("ecdsa-p256")).privateKey);
  // 512 distinct CSRs of one identity (a renewing agent's shape), each with its key's signature.
  const csrs = Array.from({ length: 512 }, (_, i) =>
    encodePem(
      "CERTIFICATE REQUEST",
      createCsr({
        privateKey: keys[i % KEYS] as Setup["keys"][number],
        commonName: CN,
        dnsNames: [CN],
        uris: [SPIFFE],
      }),
    ),
  );
  setup = {
    caDir,
    ca,
    rootPem: ca.trustBundle().roots.join(""),
    keys,
    csrs,
    client: bootstrapFor(ca, keys[0] as Setup["keys"][number], identity),
  };
  return setup;
}

function bootstrapFor(
  ca: TresorProvider,
  privateKey: Setup["keys"][number],
  who: ReturnType<typeof makeIdentity>,
  podUid = crypto.randomUUID(),
): { certPem: string; keyPem: string } {
  const commonName = bootstrapCommonName(podUid, who);
  const csr = createCsr({ privateKey, commonName });
  const issued = ca.issueSync({
    csrPem: "",
    csr: parseCsrDer(csr),
    profile: "bootstrap",
    commonName,
    dnsNames: [],
    uris: [],
    ipAddresses: [],
    validityMs: 86_400_000,
  });
  return { certPem: issued.chainPem.join(""), keyPem: privateKeyToPem(privateKey) };
}

function pooled(
  s: Setup,
  address: string,
  o: Pick<ServerBenchOptions, "seconds" | "warmupSeconds">,
  connections: number,
): PooledConfig {
  return {
    mode: "pooled",
    address,
    caPem: s.rootPem,
    client: s.client,
    csrs: s.csrs,
    connections,
    inflight: 8,
    seconds: o.seconds,
    warmupSeconds: o.warmupSeconds,
  };
}

export interface SigningFigure {
  readonly perCoreRates: number[];
  readonly wallRates: number[];
  readonly figure: Figure;
}

/** Figure 1: one server process on one core (pinned), the load generator on another. */
export async function figureSigning(o: ServerBenchOptions): Promise<SigningFigure> {
  const s = await prepare(o.dir);
  const ratios: number[] = [];
  const perCoreRates: number[] = [];
  const wallRates: number[] = [];
  const floors: number[] = [];
  const cryptoRates: number[] = [];
  const coreRates: number[] = [];
  const callCosts: { http2: number[]; grpcJs: number[] } = { http2: [], grpcJs: [] };
  const transport = await transportFiles(s, o.dir);
  console.log(
    "## 1. CSRs/s per core over gRPC+TLS (ECDSA P-256; server pinned to CPU 0, load generator to CPU 1)",
  );
  for (let run = 0; run < o.runs; run++) {
    const floor = opensslFloor("0");
    const core = await signingCore(s.caDir, "0");
    cryptoRates.push(core.crypto);
    coreRates.push(core.core);
    const server = await startServer(["--ca-dir", s.caDir, "--workers", "1"], { pin: "0" });
    try {
      const load = await runLoad(o.dir, pooled(s, server.address, o, 8), server.pids, "1");
      const perCpu = load.result.ok / load.serverCpuSeconds;
      const wall = load.result.ok / load.result.wallSeconds;
      ratios.push(perCpu / floor.floor);
      perCoreRates.push(perCpu);
      wallRates.push(wall);
      floors.push(floor.floor);
      console.log(
        `  run ${run + 1}: ${perSecond(perCpu)} per server CPU-second (${perSecond(wall)} wall, server CPU ${load.serverCpuSeconds.toFixed(1)} s in ${load.result.wallSeconds} s, ${load.result.errors} errors, p99 ${load.result.latencyMs.p99.toFixed(0)} ms, load generator CPU ${load.result.cpuSeconds.toFixed(1)} s); openssl floor ${perSecond(floor.floor)} (sign ${perSecond(floor.sign)}, verify ${perSecond(floor.verify)}) -> ${pct(perCpu / floor.floor)}`,
      );
      if (load.result.errors > 0) console.log(`    errors: ${load.result.errorSamples.join(" | ")}`);
    } finally {
      await server.stop();
    }
    const http2 = await transportCallCost(o, s, transport, "http2");
    const grpcJs = await transportCallCost(o, s, transport, "grpc-js");
    const osmCert = 1 / (perCoreRates.at(-1) as number);
    callCosts.http2.push(http2);
    callCosts.grpcJs.push(grpcJs);
    console.log(
      `    same CPU, no transport: Node's crypto alone ${perSecond(core.crypto)} (${pct(core.crypto / floor.floor)} of the floor), the signing path in process ${perSecond(core.core)} (${pct(core.core / floor.floor)})`,
    );
    console.log(
      `    CPU per call: Node HTTP/2 + TLS answering at once ${microseconds(http2)}, grpc-js with an empty handler ${microseconds(grpcJs)}, the signing path ${microseconds(1 / core.core)}; osm-cert ${microseconds(osmCert)} per CSR`,
    );
  }
  console.log(
    `  => ${spread(perCoreRates, perSecond)} = ${spread(ratios, pct)} of the openssl floor (target >= 40 %); ` +
      `ceilings without any transport: Node's crypto ${spread(cryptoRates, perSecond)} = ${pct(median(cryptoRates) / median(floors))}, ` +
      `the signing path ${spread(coreRates, perSecond)} = ${pct(median(coreRates) / median(floors))} of the floor`,
  );
  console.log(
    `  => CPU per call: Node HTTP/2 + TLS ${spread(callCosts.http2, microseconds)}, grpc-js empty handler ${spread(callCosts.grpcJs, microseconds)}, ` +
      `signing path ${microseconds(1 / median(coreRates))}, osm-cert per CSR ${spread(
        perCoreRates.map((rate) => 1 / rate),
        microseconds,
      )}`,
  );
  return {
    perCoreRates,
    wallRates,
    figure: {
      n: 1,
      what: "CSRs/s per core over gRPC+TLS (per server CPU-second)",
      measured: spread(perCoreRates, perSecond),
      reference: `openssl floor ${perSecond(median(floors))}; no transport: Node crypto ${perSecond(median(cryptoRates))}, signing path ${perSecond(median(coreRates))}; per call: HTTP/2+TLS ${microseconds(median(callCosts.http2))}, grpc-js empty ${microseconds(median(callCosts.grpcJs))}`,
      ratio: spread(ratios, pct),
      target: "≥ 40 %",
      met: median(ratios) >= 0.4,
    },
  };
}

export interface CoresFigure {
  readonly figures: Figure[];
  readonly restRssMb: number[];
  readonly loadRssMb: number[];
}

/** Figure 2: `--workers auto` on every core, against cfssl on the same cores, same load generator. */
export async function figureCores(
  o: ServerBenchOptions,
  perCore: SigningFigure | null,
): Promise<CoresFigure> {
  const s = await prepare(o.dir);
  const cpus = availableParallelism();
  console.log(
    `## 2. every core (${cpus}): osm-cert server --workers auto vs cfssl serve (ECDSA P-256 CA, mutual TLS), load generator unpinned`,
  );
  const ours: number[] = [];
  const oursCpu: number[] = [];
  const theirs: number[] = [];
  const theirsCpu: number[] = [];
  const restRssMb: number[] = [];
  const loadRssMb: number[] = [];
  const haveCfssl = ensureCfssl();
  const cfsslPki = haveCfssl ? makeCfsslPki(o.dir) : null;
  for (let run = 0; run < o.runs; run++) {
    const server = await startServer(["--ca-dir", s.caDir, "--workers", "auto"]);
    try {
      await sleep(1_000);
      restRssMb.push(rssMbOfAll(server.pids));
      const load = await runLoad(o.dir, pooled(s, server.address, o, 16), server.pids);
      const wall = load.result.ok / load.result.wallSeconds;
      ours.push(wall);
      oursCpu.push(load.result.ok / load.serverCpuSeconds);
      loadRssMb.push(load.serverRssMb);
      console.log(
        `  run ${run + 1}: osm-cert ${perSecond(wall)} (${server.pids.length - 1} workers, server CPU ${load.serverCpuSeconds.toFixed(1)} s, load generator CPU ${load.result.cpuSeconds.toFixed(1)} s in ${load.result.wallSeconds} s, ${load.result.errors} errors, p99 ${load.result.latencyMs.p99.toFixed(0)} ms, RSS at rest ${restRssMb.at(-1)?.toFixed(0)} MB, under load ${load.serverRssMb.toFixed(0)} MB)`,
      );
    } finally {
      await server.stop();
    }
    if (cfsslPki !== null) {
      const cfssl = await startCfssl(cfsslPki, { tls: true });
      try {
        const load = await runLoad(
          o.dir,
          {
            mode: "cfssl",
            address: cfssl.address,
            caPem: cfsslPki.caPem,
            client: { certPem: cfsslPki.client.cert, keyPem: cfsslPki.client.key },
            csrs: s.csrs,
            hosts: [CN, SPIFFE],
            connections: 16,
            inflight: 8,
            seconds: o.seconds,
            warmupSeconds: o.warmupSeconds,
          },
          [cfssl.pid],
        );
        const wall = load.result.ok / load.result.wallSeconds;
        theirs.push(wall);
        theirsCpu.push(load.result.ok / load.serverCpuSeconds);
        console.log(
          `         cfssl    ${perSecond(wall)} (server CPU ${load.serverCpuSeconds.toFixed(1)} s, load generator CPU ${load.result.cpuSeconds.toFixed(1)} s, ${load.result.errors} errors${load.result.errors > 0 ? `: ${load.result.errorSamples[0]}` : ""}, p99 ${load.result.latencyMs.p99.toFixed(0)} ms) -> ${times((ours.at(-1) as number) / wall)}`,
        );
      } finally {
        await cfssl.stop();
      }
    }
  }
  const figures: Figure[] = [];
  const vsCfssl = theirs.map((t, i) => (ours[i] as number) / t);
  if (theirs.length > 0) {
    console.log(
      `  => osm-cert ${spread(ours, perSecond)}, cfssl ${spread(theirs, perSecond)}: ${spread(vsCfssl, times)} cfssl (target >= 1.5 x); per server CPU-second ${perSecond(median(oursCpu))} vs ${perSecond(median(theirsCpu))}`,
    );
    figures.push({
      n: 2,
      what: `CSRs/s on all ${cpus} cores (--workers auto)`,
      measured: spread(ours, perSecond),
      reference: `cfssl ${spread(theirs, perSecond)}`,
      ratio: spread(vsCfssl, times),
      target: "≥ 1.5 × cfssl",
      met: median(vsCfssl) >= 1.5,
    });
  } else {
    console.log("  cfssl not available (not root, or apt-get failed): no cfssl reference");
  }
  if (perCore !== null) {
    const scale = ours.map((x) => x / median(perCore.wallRates));
    console.log(
      `  => ${spread(scale, times)} figure 1's wall rate on one pinned core (${perSecond(median(perCore.wallRates))}; target >= 1.8 x on 2 cores; the load generator shares these cores)`,
    );
    figures.push({
      n: 2,
      what: `scaling: all ${cpus} cores vs one`,
      measured: spread(ours, perSecond),
      reference: `figure 1 wall ${perSecond(median(perCore.wallRates))}`,
      ratio: spread(scale, times),
      target: "≥ 1.8 ×",
      met: median(scale) >= 1.8,
    });
  }
  return { figures, restRssMb, loadRssMb };
}

/** Figure 3: 10,000 distinct identities, each on a new TLS connection with its own credential. */
export async function figureStorm(o: ServerBenchOptions): Promise<Figure[]> {
  const s = await prepare(o.dir);
  const t0 = performance.now();
  const who = (i: number) => makeIdentity(`sa-${i}`, `storm-${i % 100}`);
  const csrFor = (i: number) => {
    const name = serviceCommonName(who(i), "cluster.local");
    return encodePem(
      "CERTIFICATE REQUEST",
      createCsr({
        privateKey: s.keys[i % KEYS] as Setup["keys"][number],
        commonName: name,
        dnsNames: [name],
        uris: [spiffeId(who(i), "cluster.local")],
      }),
    );
  };
  const bootstrap: StormConfig["identities"][number][] = [];
  for (let i = 0; i < o.stormPods; i++) {
    bootstrap.push({
      ...bootstrapFor(s.ca, s.keys[(i + 1) % KEYS] as Setup["keys"][number], who(i)),
      csr: csrFor(i),
    });
  }
  const fake = await FakeKubeApiServer.start({
    namespaces: Array.from({ length: 100 }, (_, i) => `storm-${i}`),
  });
  const kubeconfig = join(o.dir, "kubeconfig.json");
  writeFileSync(
    kubeconfig,
    fake.kubeconfig(
      fake.serviceAccountToken("osm-system", "osm-cert", { expiresAt: new Date(Date.now() + 86_400_000) }),
    ),
  );
  const tokens: StormConfig["identities"][number][] = bootstrap.map((b, i) => ({
    token: fake.serviceAccountToken(`storm-${i % 100}`, `sa-${i}`, {
      audiences: ["osm-cert"],
      expiresAt: new Date(Date.now() + 3_600_000),
    }),
    csr: b.csr,
  }));
  console.log(
    `## 3. pod storm: ${o.stormPods} identities, each on a new TLS connection with its own credential, at most ${o.stormWindow} connecting at once, each from its own loopback address (prepared in ${((performance.now() - t0) / 1000).toFixed(0)} s)`,
  );
  const figures: Figure[] = [];
  try {
    for (const mode of o.stormModes ?? (["bootstrap", "token"] as const)) {
      const seconds: number[] = [];
      const p99: number[] = [];
      const rss: number[] = [];
      let errors = 0;
      let retries = 0;
      for (let run = 0; run < o.runs; run++) {
        // The chart's default: 2 replicas of one worker each; here, on one machine, one address with 2 workers.
        const profDir = join(o.dir, `storm-prof-${mode}-${run}`);
        const server = await startServer(
          [
            "--ca-dir",
            s.caDir,
            "--workers",
            o.stormWorkers ?? "2",
            ...(mode === "token" ? ["--kubeconfig", kubeconfig, "--trust-bundle-configmap-name", ""] : []),
          ],
          o.stormProfile === true ? { nodeArgs: ["--cpu-prof", "--cpu-prof-dir", profDir] } : {},
        );
        let ok = 0;
        let fromUs = 0;
        let toUs = Number.POSITIVE_INFINITY;
        try {
          const load = await runLoad(
            o.dir,
            {
              mode: "storm",
              address: server.address,
              caPem: s.rootPem,
              identities: mode === "token" ? tokens : bootstrap,
              window: o.stormWindow,
            },
            server.pids,
          );
          const r = load.result;
          ok = r.ok;
          fromUs = (load.windowStartedAt - server.spawnedAt) * 1000;
          toUs = fromUs + r.wallSeconds * 1e6;
          seconds.push(r.wallSeconds);
          p99.push(r.latencyMs.p99);
          rss.push(load.serverRssMb);
          errors += r.errors;
          retries += r.retries;
          console.log(
            `  ${mode} run ${run + 1}: ${r.ok} signed in ${r.wallSeconds.toFixed(1)} s (${perSecond(r.ok / r.wallSeconds)}), ${r.errors} errors, ${r.retries} retries; latency p50 ${r.latencyMs.p50.toFixed(0)} ms, p99 ${r.latencyMs.p99.toFixed(0)} ms; server CPU ${load.serverCpuSeconds.toFixed(1)} s (${((load.serverCpuSeconds / Math.max(1, r.ok)) * 1000).toFixed(2)} ms per identity), RSS peak ${load.serverRssMb.toFixed(0)} MB (all processes); load generator CPU ${r.cpuSeconds.toFixed(1)} s`,
          );
          if (r.errors > 0) console.log(`    errors: ${r.errorSamples.join(" | ")}`);
        } finally {
          await server.stop();
        }
        if (o.stormProfile === true) printProfiles(profDir, fromUs, toUs, ok);
      }
      figures.push({
        n: 3,
        what: `storm, ${o.stormPods} pods, ${mode === "token" ? "ServiceAccount tokens (TokenReview)" : "bootstrap certificates"}`,
        measured: `${spread(seconds, (x) => `${x.toFixed(1)} s`)}; p99 ${median(p99).toFixed(0)} ms; RSS ${median(rss).toFixed(0)} MB`,
        reference: "–",
        ratio: `${errors} errors, ${retries} retries`,
        target: "0 errors, < 10 s",
        met: errors === 0 && median(seconds) < 10,
      });
    }
  } finally {
    await fake.close();
  }
  return figures;
}

/** Figure 7: the CPU split per CSR, from a --cpu-prof profile of one worker under pooled load. */
export async function figureProfile(o: ServerBenchOptions, cores: CoresFigure | null): Promise<Figure[]> {
  const s = await prepare(o.dir);
  const profDir = join(o.dir, "prof");
  console.log("## 7. server RSS, and CPU per CSR from a --cpu-prof profile (one process, pooled load)");
  const server = await startServer(["--ca-dir", s.caDir, "--workers", "1"], {
    nodeArgs: ["--cpu-prof", "--cpu-prof-dir", profDir],
  });
  let ok = 0;
  // The measured window, relative to the server's start (≈ the profiler's start).
  let fromUs = 0;
  let toUs = Number.POSITIVE_INFINITY;
  try {
    const load = await runLoad(o.dir, pooled(s, server.address, o, 8), server.pids);
    ok = load.result.ok;
    fromUs = (load.windowStartedAt - server.spawnedAt) * 1000;
    toUs = fromUs + o.seconds * 1e6;
  } finally {
    await server.stop();
  }
  const file = readdirSync(profDir).find((f) => f.endsWith(".cpuprofile"));
  if (file === undefined) throw new Error("no .cpuprofile written");
  const top = new Map<string, number>();
  const split = cpuSplit(
    JSON.parse(readFileSync(join(profDir, file), "utf8")) as CpuProfile,
    fromUs,
    toUs,
    top,
  );
  const busy = [...split.values()].reduce((a, b) => a + b, 0);
  const lines = [...split].sort((a, b) => b[1] - a[1]);
  console.log(
    `  measured window: ${(busy / 1e6).toFixed(2)} s busy for ${ok} CSRs = ${(busy / Math.max(1, ok)).toFixed(0)} µs of CPU per CSR`,
  );
  for (const [category, us] of lines) {
    console.log(
      `  ${category.padEnd(52)} ${((us / busy) * 100).toFixed(1).padStart(5)} %  ${(us / Math.max(1, ok)).toFixed(0).padStart(5)} µs/CSR`,
    );
  }
  console.log("  heaviest functions (self time):");
  for (const [name, us] of [...top].sort((a, b) => b[1] - a[1]).slice(0, 15)) {
    console.log(`    ${((us / busy) * 100).toFixed(1).padStart(5)} %  ${name}`);
  }
  const figures: Figure[] = [
    {
      n: 7,
      what: "CPU split per CSR (--cpu-prof)",
      measured: lines
        .slice(0, 6)
        .map(([c, us]) => `${c} ${((us / busy) * 100).toFixed(0)} %`)
        .join(", "),
      reference: "–",
      ratio: "–",
      target: "reported",
      met: null,
    },
  ];
  if (cores !== null) {
    figures.push({
      n: 7,
      what: "server RSS, all processes (--workers auto)",
      measured: `at rest ${median(cores.restRssMb).toFixed(0)} MB, under figure 2's load ${median(cores.loadRssMb).toFixed(0)} MB`,
      reference: "–",
      ratio: "–",
      target: "reported",
      met: null,
    });
  }
  return figures;
}

/** The CPU split of every profile in `dir` (one per server process), per identity signed. */
function printProfiles(dir: string, fromUs: number, toUs: number, ok: number): void {
  const split = new Map<string, number>();
  const top = new Map<string, number>();
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"))) {
    const profile = JSON.parse(readFileSync(join(dir, file), "utf8")) as CpuProfile;
    for (const [category, us] of cpuSplit(profile, fromUs, toUs, top)) {
      split.set(category, (split.get(category) ?? 0) + us);
    }
  }
  const busy = [...split.values()].reduce((a, b) => a + b, 0);
  console.log(
    `    profile: ${(busy / 1e6).toFixed(2)} s busy for ${ok} identities = ${(busy / Math.max(1, ok)).toFixed(0)} µs each`,
  );
  for (const [category, us] of [...split].sort((a, b) => b[1] - a[1])) {
    console.log(
      `      ${category.padEnd(52)} ${((us / busy) * 100).toFixed(1).padStart(5)} %  ${(us / Math.max(1, ok)).toFixed(0).padStart(5)} µs`,
    );
  }
  for (const [name, us] of [...top].sort((a, b) => b[1] - a[1]).slice(0, 25)) {
    console.log(`      ${((us / busy) * 100).toFixed(1).padStart(5)} %  ${name}`);
  }
}

interface CpuProfile {
  readonly nodes: { id: number; callFrame: { functionName: string; url: string }; hitCount?: number }[];
  readonly samples: number[];
  readonly timeDeltas: number[];
}

const CRYPTO_FUNCTIONS = new Set([
  "verify",
  "sign",
  "createPublicKey",
  "createPrivateKey",
  "randomBytes",
  "hash",
  "digest",
  "update",
]);

/**
 * Self time (µs) by category, of the samples from `fromUs` to `toUs` after the profile's start
 * (the load generator's measured window); idle left out. `top` gets the heaviest functions.
 */
export function cpuSplit(
  profile: CpuProfile,
  fromUs = 0,
  toUs = Number.POSITIVE_INFINITY,
  top?: Map<string, number>,
): Map<string, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let at = 0;
  for (const [i, id] of profile.samples.entries()) {
    const delta = profile.timeDeltas[i] ?? 0;
    at += delta;
    if (at < fromUs || at > toUs) continue;
    self.set(id, (self.get(id) ?? 0) + delta);
  }
  const out = new Map<string, number>();
  for (const [id, us] of self) {
    const node = byId.get(id);
    if (node === undefined) continue;
    const { functionName: fn, url } = node.callFrame;
    if (top !== undefined && fn !== "(idle)") {
      const key = `${fn || "(anonymous)"} ${url.replace(/^.*\/(node_modules|dist)\//, "")}`;
      top.set(key, (top.get(key) ?? 0) + us);
    }
    let category: string;
    if (fn === "(idle)") continue;
    if (fn === "(garbage collector)") category = "GC";
    else if (fn === "(program)") category = "native, outside JS (TLS records, HTTP/2 C++, libuv)";
    else if (url.startsWith("node:internal/crypto") && CRYPTO_FUNCTIONS.has(fn))
      category = "crypto (verify, sign, key import)";
    else if (url.startsWith("node:internal/crypto") || url === "node:crypto")
      category = "crypto (verify, sign, key import)";
    else if (
      /node:(internal\/)?(tls|_tls|http2|net|stream|internal\/stream|internal\/http2|internal\/tls)/.test(
        url,
      ) ||
      url.startsWith("node:internal/js_stream")
    )
      category = "TLS + HTTP/2 (Node)";
    else if (url.includes("@grpc/grpc-js")) category = "gRPC (grpc-js)";
    else if (url.includes("protobufjs") || url.includes("@protobufjs")) category = "protobuf";
    else if (
      url.includes("/pino") ||
      url.includes("sonic-boom") ||
      url.includes("fast-redact") ||
      url.includes("quick-format")
    )
      category = "logging (pino)";
    else if (url.includes("/dist/common/x509/")) category = "own code: X.509 (DER, CSR, certificate)";
    else if (url.includes("/dist/")) category = "own code: the rest";
    else if (url.startsWith("node:")) category = "other Node internals (timers, events…)";
    else category = "other";
    out.set(category, (out.get(category) ?? 0) + us);
  }
  return out;
}
