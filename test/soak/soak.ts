// The soak (issue 10, Deliver 4): `npm run test:soak`. Many agents with short-lived certificates
// run against two signing-server replicas behind one address (test/helpers/tcp-balancer.ts) while
// faults are injected at random: a replica SIGKILLed or SIGTERMed and restarted, an agent SIGKILLed
// and restarted under its open SDS streams. An Envoy-like client on every agent checks each
// certificate it is handed (test/helpers/checking-envoy.ts). At the end it reports rotations done,
// gaps seen by SDS clients, expired certificates served and the memory (RSS) of every process at
// its start and end, and exits 1 if a promise broke.
//
// Directory mode (Tresor with a shared CA directory); no Kubernetes API, so no API faults here
// (those are in test/integration/fault-backends.test.ts). The balancer and the checking clients run
// in processes of their own (harness-processes.ts), so the driver's event loop cannot delay what a
// client reads. Every gap is explained from the logs: when the agent got the certificate, what it
// logged in the 40 s before, which replica signed it and when.
//
//   OSM_CERT_SOAK_MINUTES   run time (default 30)
//   OSM_CERT_SOAK_AGENTS    agent processes (default 200)
//   OSM_CERT_SOAK_VALIDITY  certificate validity, Go syntax (default 30s)
//   OSM_CERT_SOAK_FAULT_SECONDS  mean time between faults (default 20)
//   OSM_CERT_SOAK_FAULTS    which faults, comma-separated (default replica-kill,replica-term,agent-restart)

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { HeldCertificate } from "../helpers/checking-envoy.js";
import { tempDir } from "../helpers/pki.js";
import {
  type CliProcess,
  issueBootstrapDir,
  type LogLine,
  startBootstrapAgent,
  startServerProcess,
} from "../helpers/processes.js";
import { BalancerProcess, CheckerProcess, type CheckerReport } from "./harness-processes.js";

const MINUTES = Number(process.env.OSM_CERT_SOAK_MINUTES ?? 30);
const AGENTS = Number(process.env.OSM_CERT_SOAK_AGENTS ?? 200);
const VALIDITY = process.env.OSM_CERT_SOAK_VALIDITY ?? "30s";
const FAULT_EVERY_MS = Number(process.env.OSM_CERT_SOAK_FAULT_SECONDS ?? 20) * 1000;
const FAULTS = (process.env.OSM_CERT_SOAK_FAULTS ?? "replica-kill,replica-term,agent-restart").split(",");
/** Agents started at once: a fleet coming up in waves, not one fork bomb on two cores. */
const START_BATCH = 20;

interface Tracked {
  readonly name: string;
  readonly proc: CliProcess;
  readonly startRssMb: number;
  endRssMb?: number;
  /** We stopped it on purpose (a fault or the end of the run). */
  stoppedByUs: boolean;
}

function rssMb(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return Number(kb) / 1024;
  } catch {
    return Number.NaN;
  }
}

function log(message: string): void {
  process.stdout.write(`[soak ${new Date().toISOString()}] ${message}\n`);
}

const dir = await tempDir();
const caDir = join(dir.path, "ca");
const bootDir = await issueBootstrapDir(caDir, join(dir.path, "boot"), "bookstore", "bookstore-v2");
const processes: Tracked[] = [];
const broken: string[] = [];
const faults: Record<string, number> = {};

function track(name: string, proc: CliProcess): Tracked {
  const tracked: Tracked = { name, proc, startRssMb: rssMb(proc.child.pid), stoppedByUs: false };
  processes.push(tracked);
  void proc.exited.then(({ code, signal }) => {
    if (!tracked.stoppedByUs) broken.push(`${name} exited by itself (code ${code}, signal ${signal})`);
  });
  return tracked;
}

async function stop(tracked: Tracked, signal: NodeJS.Signals): Promise<void> {
  tracked.endRssMb = rssMb(tracked.proc.child.pid);
  tracked.stoppedByUs = true;
  await tracked.proc.stop(signal);
}

async function startReplica(index: number): Promise<{ tracked: Tracked; address: string }> {
  const { server, address } = await startServerProcess(caDir);
  return { tracked: track(`replica ${index}`, server), address };
}

log(
  `${AGENTS} agents, certificates of ${VALIDITY}, 2 replicas, ${MINUTES} min, a fault every ~${FAULT_EVERY_MS / 1000} s`,
);
const replicas = await Promise.all([startReplica(0), startReplica(1)]);
const balancer = await BalancerProcess.start(replicas.map((r) => r.address));
const replicaOf: Tracked[] = replicas.map((r) => r.tracked);

const agentOf: Tracked[] = [];
/** The Envoy-like clients, one process per start batch. */
const checkers: CheckerProcess[] = [];
const socketOf = (i: number) => join(dir.path, `sds-${i}.sock`);

async function startAgent(i: number, generation: number): Promise<Tracked> {
  const proc = startBootstrapAgent({
    server: balancer.address,
    bootstrapDir: bootDir,
    namespace: "bookstore",
    serviceAccount: "bookstore-v2",
    socket: socketOf(i),
    name: `agent ${i}.${generation}`,
    extra: ["--cert-validity", VALIDITY],
  });
  await proc.waitForEvent("agent.started", 60_000);
  return track(`agent ${i}.${generation}`, proc);
}

const startedAt = Date.now();
for (let first = 0; first < AGENTS; first += START_BATCH) {
  const batch = Array.from({ length: Math.min(START_BATCH, AGENTS - first) }, (_, k) => first + k);
  const started = await Promise.all(batch.map((i) => startAgent(i, 0)));
  for (const [k, i] of batch.entries()) agentOf[i] = started[k] as Tracked;
  checkers.push(await CheckerProcess.start(batch.map(socketOf)));
}
log(`all ${AGENTS} agents started in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
const generations = new Array<number>(AGENTS).fill(0);

// ----- faults at random ---------------------------------------------------------------------

async function killReplica(signal: NodeJS.Signals): Promise<void> {
  const index = Math.floor(Math.random() * 2);
  const victim = replicaOf[index] as Tracked;
  faults[`replica ${signal}`] = (faults[`replica ${signal}`] ?? 0) + 1;
  log(`fault: ${signal} ${victim.name}`);
  await stop(victim, signal);
  await sleep(2_000 + Math.random() * 6_000);
  const again = await startReplica(index);
  replicaOf[index] = again.tracked;
  await balancer.replace(index, again.address);
}

async function restartAgent(): Promise<void> {
  const i = Math.floor(Math.random() * AGENTS);
  faults["agent SIGKILL + restart"] = (faults["agent SIGKILL + restart"] ?? 0) + 1;
  log(`fault: SIGKILL agent ${i} and restart it`);
  await stop(agentOf[i] as Tracked, "SIGKILL");
  generations[i] = (generations[i] ?? 0) + 1;
  agentOf[i] = await startAgent(i, generations[i] as number);
}

const endAt = Date.now() + MINUTES * 60_000;
let lastReport = Date.now();
while (Date.now() < endAt) {
  await sleep(Math.min(endAt - Date.now(), FAULT_EVERY_MS * (0.5 + Math.random())));
  if (Date.now() >= endAt) break;
  const pick = FAULTS[Math.floor(Math.random() * FAULTS.length)];
  try {
    if (pick === "replica-kill") await killReplica("SIGKILL");
    else if (pick === "replica-term") await killReplica("SIGTERM");
    else if (pick === "agent-restart") await restartAgent();
    else throw new Error(`unknown fault ${pick} in OSM_CERT_SOAK_FAULTS`);
  } catch (error) {
    broken.push(`fault injection failed: ${(error as Error).message}`);
  }
  if (Date.now() - lastReport > 60_000) {
    lastReport = Date.now();
    const seen = await Promise.all(checkers.map((c) => c.summary()));
    const gaps = seen.reduce((n, s) => n + s.gaps, 0);
    const invalid = seen.reduce((n, s) => n + s.invalid, 0);
    log(`progress: ${rotations()} rotations, gaps ${gaps}, expired served ${invalid}`);
  }
}

// ----- the end: let the last fault settle, then check and report ----------------------------

await sleep(5_000);
function rotations(): number {
  return processes
    .filter((p) => p.name.startsWith("agent"))
    .reduce((n, p) => n + p.proc.lines.filter((l) => l.event === "certificate.rotated").length, 0);
}
const envoys: CheckerReport[] = (await Promise.all(checkers.map((c) => c.reports()))).flat();
const current = (e: CheckerReport) => e.held.at(-1);
const isGap = (v: string) => v.startsWith("gap");
const isInvalid = (v: string) => v.startsWith("invalid");
const now = Date.now();
const stale = envoys.filter((e) => (current(e)?.notAfter ?? 0) <= now).length;
if (stale > 0) broken.push(`${stale} SDS clients hold no valid certificate at the end`);
for (const [i, e] of envoys.entries()) {
  if ((current(e)?.notAfter ?? 0) > now) continue;
  const last = (agentOf[i] as Tracked).proc.lines.filter((l) => (l.level ?? 0) >= 40).at(-1);
  log(
    `agent ${i}: holds ${current(e)?.serial ?? "nothing"} (notAfter ${new Date(current(e)?.notAfter ?? 0).toISOString()}); last warning: ${JSON.stringify(last)}`,
  );
}
const gaps = envoys.reduce((n, e) => n + e.violations.filter(isGap).length, 0);
const invalid = envoys.reduce((n, e) => n + e.violations.filter(isInvalid).length, 0);
const otherViolations = envoys.flatMap((e) => e.violations.filter((v) => !isGap(v) && !isInvalid(v)));
const reconnects = envoys.reduce((n, e) => n + e.reconnects, 0);
const serialsSeen = envoys.reduce((n, e) => n + new Set(e.held.map((h) => h.serial)).size, 0);
if (gaps > 0) broken.push(`${gaps} gaps seen by SDS clients`);
if (invalid > 0) broken.push(`${invalid} expired or not-yet-valid certificates served`);
for (const v of otherViolations.slice(0, 10)) broken.push(v);
for (const [i, e] of envoys.entries()) {
  if (e.violations.length === 0) continue;
  for (const v of e.violations.slice(0, 2)) log(`agent ${i} violation: ${v}`);
  for (const held of lateArrivals(e).slice(0, 2)) explainGap(i, held);
}

/** When agent `i` (any generation) logged that it obtained certificate `serial`. */
function agentRotation(i: number, serial: string): number | undefined {
  for (const p of processes.filter((t) => t.name.startsWith(`agent ${i}.`))) {
    const line = p.proc.lines.find((l) => l.event === "certificate.rotated" && l.serial === serial);
    if (line !== undefined) return Number(line.time);
  }
  return undefined;
}

/**
 * Gaps the agent itself caused: the certificate reached the agent after the one it replaces had
 * expired. The rest were read late by the checking client.
 */
function agentLateGaps(i: number, envoy: CheckerReport): number {
  return envoy.held.filter((h, k) => {
    const previous = envoy.held[k - 1];
    if (previous === undefined || previous.serial === h.serial || h.receivedAt < previous.notAfter)
      return false;
    return (agentRotation(i, h.serial) ?? Number.POSITIVE_INFINITY) >= previous.notAfter;
  }).length;
}

/** Certificates that arrived after the one before had expired. */
function lateArrivals(envoy: CheckerReport): HeldCertificate[] {
  return envoy.held.filter((h, k) => {
    const previous = envoy.held[k - 1];
    return previous !== undefined && previous.serial !== h.serial && h.receivedAt >= previous.notAfter;
  });
}

/**
 * What led to a gap, from the logs: everything agent `i` logged in the 40 s before the late
 * certificate arrived, which replica signed it and when, and what the replicas did meanwhile.
 */
function explainGap(i: number, late: HeldCertificate): void {
  const from = late.receivedAt - 40_000;
  const inWindow = (l: LogLine) => Number(l.time) >= from && Number(l.time) <= late.receivedAt + 1_000;
  const show = (who: string, l: LogLine) => {
    const { time, level, event, msg, pid, hostname, ...rest } = l;
    log(`  ${who} ${new Date(Number(time)).toISOString()} ${event ?? msg} ${JSON.stringify(rest)}`);
  };
  const rotated = agentRotation(i, late.serial);
  log(
    `  agent ${i}: ${late.serial} arrived ${new Date(late.receivedAt).toISOString()}; the agent had it at ${rotated === undefined ? "?" : new Date(rotated).toISOString()}; its log before:`,
  );
  for (const p of processes.filter((t) => t.name.startsWith(`agent ${i}.`)))
    for (const l of p.proc.lines.filter(inWindow)) show(p.name, l);
  for (const p of processes.filter((t) => t.name.startsWith("replica"))) {
    for (const l of p.proc.lines.filter(inWindow)) {
      const signedIt = l.event === "certificate.issued" && String(l.serial).toUpperCase() === late.serial;
      if (signedIt || (l.event !== "certificate.issued" && (l.level ?? 0) >= 30)) show(p.name, l);
    }
  }
}

const live = processes.filter((p) => !p.stoppedByUs);
for (const p of live) p.endRssMb = rssMb(p.proc.child.pid);
await Promise.all(checkers.map((c) => c.close()));
await Promise.all(live.map((p) => stop(p, "SIGTERM")));
await balancer.close();

const summary = (list: Tracked[], pick: (t: Tracked) => number | undefined) => {
  const values = list
    .map(pick)
    .filter((v): v is number => v !== undefined && Number.isFinite(v))
    .sort((a, b) => a - b);
  if (values.length === 0) return "-";
  const at = (q: number) =>
    (values[Math.min(values.length - 1, Math.floor(q * values.length))] as number).toFixed(0);
  return `min ${at(0)} / median ${at(0.5)} / max ${at(1)} MB`;
};
const agentsTracked = processes.filter((p) => p.name.startsWith("agent"));
// The agents that ran the whole soak: their drift is the one that matters.
const longLived = agentsTracked.filter((p) => p.name.endsWith(".0") && live.includes(p));
const replicasTracked = processes.filter((p) => p.name.startsWith("replica"));

log("---- soak report ----");
log(`ran ${MINUTES} min: ${AGENTS} agents, certificates of ${VALIDITY}, 2 replicas behind one balancer`);
log(`faults injected: ${JSON.stringify(faults)}`);
log(
  `rotations done (certificate.rotated in agent logs): ${rotations()}; certificates seen by SDS clients: ${serialsSeen}; SDS reconnects: ${reconnects}`,
);
const agentLate = envoys.reduce((n, e, i) => n + agentLateGaps(i, e), 0);
log(`gaps seen by SDS clients: ${gaps} (the agent had the new certificate only after expiry: ${agentLate})`);
log(`expired certificates served: ${invalid}`);
log(
  `agent RSS at start: ${summary(longLived, (p) => p.startRssMb)}; at end: ${summary(longLived, (p) => p.endRssMb)} (${longLived.length} agents that ran throughout)`,
);
for (const r of replicasTracked) {
  log(
    `${r.name}: RSS at start ${r.startRssMb.toFixed(0)} MB, at end ${r.endRssMb?.toFixed(0) ?? "-"} MB${r.stoppedByUs && !live.includes(r) ? " (killed by a fault)" : ""}`,
  );
}
if (process.env.OSM_CERT_SOAK_VERBOSE === "1") {
  for (const p of processes)
    log(`${p.name}: ${p.startRssMb.toFixed(0)} → ${p.endRssMb?.toFixed(0) ?? "-"} MB`);
}
await dir.remove();
if (broken.length > 0) {
  for (const b of broken) log(`BROKEN: ${b}`);
  process.exit(1);
}
log("every promise held");
process.exit(0);
