// Benchmarks (not tests): `npm run bench`. Every figure is reported next to a reference measured in
// the same run on the same machine, because this machine is shared and absolute numbers drift.
//
//   signing   CSRs signed per second by one server process over gRPC+TLS, vs `openssl speed ecdsap256`
//   agent     start -> first secret (vs `node -e 0`); RSS with 100 SDS streams after 100 rotations (vs a
//             bare `node`); a rotation's fan-out to 1,000 open SDS streams

import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { makeIdentity, serviceCommonName, spiffeId } from "../common/identity.js";
import { generateKeyPair } from "../common/keys.js";
import { encodePem } from "../common/pem.js";
import { createCsr, parseCsrDer } from "../common/x509/csr.js";
import { connectSds, SdsStream } from "../test/helpers/envoy-sds-client.js";
import { bootstrapCert, openTestCa, tempDir } from "../test/helpers/pki.js";
import { CLI, type CliProcess, runCli, startCli, startServerProcess } from "../test/helpers/processes.js";
import { TestSigningClient } from "../test/helpers/signing-client.js";

const { values } = parseArgs({
  options: {
    only: { type: "string" },
    seconds: { type: "string", default: "5" },
    // Node/V8 options for the agent processes only (NODE_OPTIONS), e.g. "--max-semi-space-size=1".
    "agent-node-options": { type: "string" },
  },
});
const SECONDS = Number(values.seconds);
const identity = makeIdentity("bench", "bench");
const CN = serviceCommonName(identity, "cluster.local");
const SPIFFE = spiffeId(identity, "cluster.local");

/** openssl's own sign and verify rates for ECDSA P-256 on one core, and the per-CSR floor they imply. */
function opensslFloor(): { sign: number; verify: number; floor: number } {
  const out = execFileSync("openssl", ["speed", "-seconds", "3", "ecdsap256"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  });
  const row = /256 bits ecdsa \(nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+([\d.]+)/.exec(out);
  if (row === null) throw new Error(`cannot read openssl speed output:\n${out}`);
  const sign = Number(row[1]);
  const verify = Number(row[2]);
  return { sign, verify, floor: 1 / (1 / sign + 1 / verify) };
}

async function makeCsrs(count: number): Promise<string[]> {
  const csrs: string[] = [];
  for (let i = 0; i < count; i++) {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    csrs.push(
      encodePem(
        "CERTIFICATE REQUEST",
        createCsr({ privateKey, commonName: CN, dnsNames: [CN], uris: [SPIFFE] }),
      ),
    );
  }
  return csrs;
}

async function benchSigning(): Promise<void> {
  const dir = await tempDir("osm-cert-bench-");
  try {
    const caDir = join(dir.path, "ca");
    const ca = await openTestCa(caDir);
    const root = ca.trustBundle().roots.join("");
    const csrs = await makeCsrs(2_000);

    // In-process core (no gRPC): parse + verify + build + sign, one core.
    const { TresorProvider } = await import("../server/providers/tresor/tresor.js");
    if (!(ca instanceof TresorProvider)) throw new Error("unexpected provider");
    const ders = csrs.map((pem) => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ""), "base64"));
    let core = 0;
    const coreStart = performance.now();
    while (performance.now() - coreStart < 2_000) {
      const der = ders[core % ders.length] as Buffer;
      ca.issueSync({
        csrPem: "",
        csr: parseCsrDer(der),
        profile: "service",
        commonName: CN,
        dnsNames: [CN],
        uris: [SPIFFE],
        ipAddresses: [],
        validityMs: 3_600_000,
      });
      core++;
    }
    const coreRate = core / ((performance.now() - coreStart) / 1000);

    // Over gRPC+TLS against one server process; the load generator runs in this process.
    // One identity at full speed is what the per-identity rate exists to stop; the bench measures signing.
    const { server, address } = await startServerProcess(caDir, ["--per-identity-signing-rate", "0"]);
    const clients = await Promise.all(
      Array.from(
        { length: 4 },
        async () => new TestSigningClient(address, root, await bootstrapCert(ca, identity)),
      ),
    );
    let done = 0;
    let errors = 0;
    const inflightPerClient = 16;
    const end = performance.now() + SECONDS * 1000;
    const warmup = performance.now() + 1000;
    let measuredFrom = 0;
    let measuredCount = 0;
    await Promise.all(
      clients.flatMap((client) =>
        Array.from({ length: inflightPerClient }, async (_, i) => {
          let n = i;
          while (performance.now() < end) {
            try {
              await client.create(csrs[n++ % csrs.length] as string);
              done++;
              if (performance.now() >= warmup) {
                if (measuredFrom === 0) measuredFrom = performance.now();
                measuredCount++;
              }
            } catch {
              errors++;
            }
          }
        }),
      ),
    );
    const grpcRate = measuredCount / ((performance.now() - measuredFrom) / 1000);
    const rss =
      Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.child.pid}/status`, "utf8"))?.[1]) / 1024;
    for (const c of clients) c.close();
    await server.stop();

    const floor = opensslFloor();
    console.log("## signing (ECDSA P-256, one server process)");
    console.log(
      `openssl speed ecdsap256: sign ${floor.sign.toFixed(0)}/s, verify ${floor.verify.toFixed(0)}/s -> floor ${floor.floor.toFixed(0)} CSRs/s (one verify + one sign)`,
    );
    console.log(
      `in-process parse+verify+build+sign: ${coreRate.toFixed(0)}/s = ${((coreRate / floor.floor) * 100).toFixed(0)} % of the floor`,
    );
    console.log(
      `gRPC+TLS CreateCertificate: ${grpcRate.toFixed(0)}/s = ${((grpcRate / floor.floor) * 100).toFixed(0)} % of the floor (${done} done, ${errors} errors, server RSS ${rss.toFixed(0)} MB)`,
    );
  } finally {
    await dir.remove();
  }
}

function rssOf(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
}

const median = (xs: readonly number[]): number => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mb = (x: number) => `${x.toFixed(1)} MB`;

/** RSS sampled every 200 ms for a second: the median and the highest sample. */
async function sampleRss(pid: number): Promise<{ median: number; max: number }> {
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    samples.push(rssOf(pid));
    await sleep(200);
  }
  return { median: median(samples), max: Math.max(...samples) };
}

/** The references: `node -e 0` wall time and the RSS of an idle bare `node` (medians of a few runs). */
async function bareNode(runs: number): Promise<{ rss: number; startMs: number }> {
  const starts: number[] = [];
  const rss: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    execFileSync(process.execPath, ["-e", "0"]);
    starts.push(performance.now() - t0);
    const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
    await sleep(500);
    rss.push(rssOf(child.pid as number));
    child.kill();
    await once(child, "exit");
  }
  return { rss: median(rss), startMs: median(starts) };
}

const SDS_NAMES = ["default", "ROOTCA"];

/**
 * An SDS stream driven as Envoy drives one: asks for `default` + `ROOTCA`, ACKs every response, and
 * records when each response arrived (Date.now(), comparable with the agent's log timestamps).
 */
class FollowedStream {
  readonly received: number[] = [];
  private readonly stream: SdsStream;
  private closed = false;
  failure: Error | undefined;

  constructor(client: ReturnType<typeof connectSds>) {
    this.stream = new SdsStream(client);
    this.stream.request(SDS_NAMES);
    void this.follow();
  }

  private async follow(): Promise<void> {
    try {
      while (!this.closed) {
        const response = await this.stream.next(this.received.length, 60_000);
        if (response === null) continue;
        this.received.push(Date.now());
        this.stream.request(SDS_NAMES, { version: response.version_info, nonce: response.nonce });
      }
    } catch (error) {
      if (!this.closed) this.failure = error as Error;
    }
  }

  close(): void {
    this.closed = true;
    this.stream.end();
  }
}

async function waitUntil(
  what: string,
  condition: () => boolean,
  timeoutMs: number,
  pollMs = 20,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(pollMs);
  }
}

const AGENT_NODE_OPTIONS = values["agent-node-options"];
const AGENT_ENV: NodeJS.ProcessEnv =
  AGENT_NODE_OPTIONS === undefined ? {} : { NODE_OPTIONS: AGENT_NODE_OPTIONS };
const STARTS = 5;
const ROTATIONS = 100;
const SCENARIO_STREAMS = 100;
const FANOUT_STREAMS = 1_000;
const FANOUT_ROTATIONS = 5;
// Short certificates so that 100 rotations take about half a minute: 2 s asked for (the server
// truncates notAfter to whole seconds, so 1-2 s remain), renewed after 20 % of what remains.
const FAST_ROTATION = ["--cert-validity", "2s", "--rotation-fraction", "0.2"];

async function benchAgent(): Promise<void> {
  const bare = await bareNode(STARTS);
  const dir = await tempDir("osm-cert-bench-");
  const agents: CliProcess[] = [];
  try {
    const caDir = join(dir.path, "ca");
    const { server, address } = await startServerProcess(caDir);
    const out = join(dir.path, "boot");
    await runCli([
      "issue",
      "bootstrap",
      "--namespace",
      "bench",
      "--service-account",
      "bench",
      "--ca-dir",
      caDir,
      "--out",
      out,
    ]);
    let sockets = 0;
    const startAgent = (extra: readonly string[] = []) => {
      const socket = join(dir.path, `sds-${sockets++}.sock`);
      const agent = startCli(
        "agent",
        [
          "agent",
          "--server",
          address,
          "--ca-bundle",
          join(out, "ca.crt"),
          "--namespace",
          "bench",
          "--service-account",
          "bench",
          "--bootstrap-cert",
          join(out, "tls.crt"),
          "--bootstrap-key",
          join(out, "tls.key"),
          "--sds-socket",
          socket,
          "--admin-listen",
          "127.0.0.1:0",
          ...extra,
        ],
        AGENT_ENV,
      );
      agents.push(agent);
      return { agent, socket };
    };
    const rotations = (agent: CliProcess) =>
      agent.lines.filter((line) => line.event === "certificate.rotated").length;

    // 1. Start -> first secret served over SDS, and RSS once idle with one certificate. Like Envoy,
    // the client connects as soon as the socket exists and asks at once; the agent answers when it
    // has a certificate.
    const startMs: number[] = [];
    const idleRss: number[] = [];
    for (let i = 0; i < STARTS; i++) {
      const t0 = performance.now();
      const { agent, socket } = startAgent();
      await waitUntil("the SDS socket", () => existsSync(socket), 30_000, 2);
      const stream = new SdsStream(connectSds(socket));
      stream.request(SDS_NAMES);
      if ((await stream.next(0, 30_000)) === null) throw new Error("no first secret over SDS");
      startMs.push(performance.now() - t0);
      stream.end();
      await sleep(1000);
      idleRss.push(rssOf(agent.child.pid as number));
      await agent.stop();
    }

    // 2. The DESIGN's scenario: 100 SDS streams open (and ACKing, as Envoy does) through 100 rotations.
    const { agent, socket } = startAgent(FAST_ROTATION);
    await agent.waitForEvent("certificate.rotated", 30_000);
    const streams: FollowedStream[] = [];
    for (let i = 0; i < SCENARIO_STREAMS; i++) streams.push(new FollowedStream(connectSds(socket)));
    await waitUntil(
      "the first response on every stream",
      () => streams.every((s) => s.received.length > 0),
      30_000,
    );
    const rotationStart = performance.now();
    const baseRotations = rotations(agent);
    await waitUntil(`${ROTATIONS} rotations`, () => rotations(agent) - baseRotations >= ROTATIONS, 300_000);
    const rotationSeconds = (performance.now() - rotationStart) / 1000;
    const scenarioRss = await sampleRss(agent.child.pid as number);
    const pushesPerStream = median(streams.map((s) => s.received.length));
    const failedStreams = streams.filter((s) => s.failure !== undefined).length;

    // 3. Fan-out: a rotation reaching 1,000 open streams, from the change in the agent to the last
    // stream's receipt in this process (so this process's own latency is included).
    for (let i = streams.length; i < FANOUT_STREAMS; i++)
      streams.push(new FollowedStream(connectSds(socket)));
    await waitUntil(
      `a response on all ${FANOUT_STREAMS} streams`,
      () => streams.every((s) => s.received.length > 0),
      60_000,
    );
    const fanoutFrom = agent.lines.length;
    const fullPushes = () =>
      agent.lines
        .slice(fanoutFrom)
        .filter((line) => line.event === "sds.pushed" && line.streams === FANOUT_STREAMS);
    await waitUntil(
      `${FANOUT_ROTATIONS} pushes to ${FANOUT_STREAMS} streams`,
      () => fullPushes().length >= FANOUT_ROTATIONS + 1,
      120_000,
    );
    await sleep(500);
    const fanouts: number[] = [];
    const pushLoops: number[] = [];
    for (const push of fullPushes().slice(0, FANOUT_ROTATIONS)) {
      const changedAt = (push.time as number) - (push.ms as number);
      // Each stream's first receipt at or after the change (ms clocks: allow 1 ms of rounding).
      const arrivals = streams.map(
        (s) => s.received.find((t) => t >= changedAt - 1) ?? Number.POSITIVE_INFINITY,
      );
      fanouts.push(Math.max(...arrivals) - changedAt);
      pushLoops.push(push.ms as number);
    }
    const fanoutRss = await sampleRss(agent.child.pid as number);
    for (const s of streams) s.close();
    await agent.stop();
    await server.stop();

    const ratio = (x: number, ref: number) => `${(x / ref).toFixed(2)} x`;
    console.log(
      `## agent footprint${AGENT_NODE_OPTIONS === undefined ? "" : ` (agent run with NODE_OPTIONS="${AGENT_NODE_OPTIONS}")`}`,
    );
    console.log(
      `bare node: RSS ${mb(bare.rss)} (idle \`node -e "setInterval(...)"\`), \`node -e 0\` ${bare.startMs.toFixed(0)} ms (medians of ${STARTS})`,
    );
    console.log(
      `agent start -> first secret over SDS: ${median(startMs).toFixed(0)} ms = ${ratio(median(startMs), bare.startMs)} \`node -e 0\` (target <= 3 x; median of ${STARTS}: ${startMs.map((x) => x.toFixed(0)).join(", ")} ms; the client connected as soon as the socket existed; includes key generation, CSR and one signing round trip)`,
    );
    console.log(
      `agent idle after its first certificate: RSS ${mb(median(idleRss))} = ${ratio(median(idleRss), bare.rss)} bare node`,
    );
    console.log(
      `agent with ${SCENARIO_STREAMS} SDS streams after ${ROTATIONS} rotations (${rotationSeconds.toFixed(0)} s, ${pushesPerStream} responses per stream, ${failedStreams} failed streams): RSS ${mb(scenarioRss.median)} = ${ratio(scenarioRss.median, bare.rss)} bare node (target <= 1.25 x; highest sample ${mb(scenarioRss.max)})`,
    );
    console.log(
      `fan-out of a rotation to ${FANOUT_STREAMS} streams, change -> last stream's receipt: median ${median(fanouts).toFixed(0)} ms, worst ${Math.max(...fanouts).toFixed(0)} ms of ${fanouts.length} (target <= 100 ms; the agent's own push loop: median ${median(pushLoops).toFixed(1)} ms); RSS with ${FANOUT_STREAMS} streams ${mb(fanoutRss.median)}`,
    );
  } finally {
    for (const agent of agents) await agent.stop();
    await dir.remove();
  }
}

console.log(`osm-cert benchmarks, node ${process.version}, CLI ${CLI}`);
if (values.only === undefined || values.only === "signing") await benchSigning();
if (values.only === undefined || values.only === "agent") await benchAgent();
