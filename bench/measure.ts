// What every figure of bench/run.ts needs: processes that never outlive a failed step, CPU and RSS
// read from /proc, the openssl reference, the load generator, and median + spread of runs.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { LoadResult, PooledConfig, StormConfig } from "./loadgen.js";

const CLI = fileURLToPath(new URL("../cli/main.js", import.meta.url));
const LOADGEN = fileURLToPath(new URL("./loadgen.js", import.meta.url));

/** Every process a figure started; killed (with its process group) when the figure ends or fails. */
const children = new Set<ChildProcess>();

export function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    }
  }
  children.clear();
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

/** CPUs to pin to, when this machine has at least two: the server on one, the load on another. */
export const CAN_PIN = availableParallelism() >= 2;

type Line = Record<string, unknown>;

export interface Spawned {
  readonly child: ChildProcess;
  readonly lines: Line[];
  next(event: string, timeoutMs?: number): Promise<Line>;
  /** SIGTERM, then SIGKILL to the whole group after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/** A process in a group of its own whose stdout is JSON lines. */
export function spawnJsonLines(
  command: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; pin?: string } = {},
): Spawned {
  const [cmd, argv] =
    options.pin !== undefined && CAN_PIN
      ? ["taskset", ["-c", options.pin, command, ...args]]
      : [command, args];
  const child = spawn(cmd, argv, {
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...options.env },
  });
  children.add(child);
  const lines: Line[] = [];
  const waiters: { event: string; resolve: (l: Line) => void }[] = [];
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    if (stderr.length < 20_000) stderr += chunk;
  });
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (text) => {
    let line: Line;
    try {
      line = JSON.parse(text) as Line;
    } catch {
      return;
    }
    lines.push(line);
    for (const w of [...waiters]) {
      if (line.event === w.event) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  const exited = once(child, "exit");
  return {
    child,
    lines,
    next(event, timeoutMs = 120_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`${command}: no "${event}" within ${timeoutMs} ms\n${stderr}`)),
          timeoutMs,
        );
        void exited.then(() => {
          clearTimeout(timer);
          reject(new Error(`${command} exited before "${event}"\n${stderr.slice(-2000)}`));
        });
        waiters.push({
          event,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
        });
      });
    },
    async stop(graceMs = 5_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => {
          try {
            process.kill(-(child.pid as number), "SIGKILL");
          } catch {}
        }, graceMs);
        await exited;
        clearTimeout(timer);
      }
      children.delete(child);
    },
  };
}

export interface BenchServer extends Spawned {
  /** performance.now() when it was spawned. */
  readonly spawnedAt: number;
  readonly address: string;
  readonly admin: string;
  /** The processes that serve (the workers, or the one process). */
  readonly pids: readonly number[];
}

export async function startServer(
  args: readonly string[],
  options: { pin?: string; nodeArgs?: readonly string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<BenchServer> {
  const spawnedAt = performance.now();
  const spawned = spawnJsonLines(
    process.execPath,
    [
      ...(options.nodeArgs ?? []),
      CLI,
      "server",
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
      // The load generators send one identity at full speed, which is what the per-identity rate
      // exists to stop; the bench measures signing, so the rate is off (the storm's identities are distinct).
      "--per-identity-signing-rate",
      "0",
      ...args,
    ],
    { ...options, env: { OSM_CERT_LOG_LEVEL: "info", ...options.env } },
  );
  const started = await spawned.next("server.started", 60_000);
  const workerPids = started.workerPids as number[] | undefined;
  return {
    ...spawned,
    spawnedAt,
    address: String(started.address),
    admin: String(started.admin),
    pids: [spawned.child.pid as number, ...(workerPids ?? [])],
  };
}

/** CPU seconds (user + system) a process has used so far. */
export function cpuSecondsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

export const cpuSecondsOfAll = (pids: readonly number[]) => pids.reduce((s, pid) => s + cpuSecondsOf(pid), 0);

export function rssMb(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;
  } catch {
    return 0;
  }
}

export const rssMbOfAll = (pids: readonly number[]) => pids.reduce((s, pid) => s + rssMb(pid), 0);

/** openssl's own sign and verify rates for ECDSA P-256 (per CPU second), and the per-CSR floor. */
export function opensslFloor(pin?: string): { sign: number; verify: number; floor: number } {
  const args = ["speed", "-seconds", "2", "ecdsap256"];
  const out =
    pin !== undefined && CAN_PIN
      ? execFileSync("taskset", ["-c", pin, "openssl", ...args], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "ignore"],
        })
      : execFileSync("openssl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const row = /256 bits ecdsa \(nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+([\d.]+)/.exec(out);
  if (row === null) throw new Error(`cannot read openssl speed output:\n${out}`);
  const sign = Number(row[1]);
  const verify = Number(row[2]);
  return { sign, verify, floor: 1 / (1 / sign + 1 / verify) };
}

export interface LoadRun {
  readonly result: LoadResult;
  /** performance.now() when the load generator's measured window started. */
  readonly windowStartedAt: number;
  /** Server CPU seconds over the load generator's window. */
  readonly serverCpuSeconds: number;
  /** Highest server RSS (all its processes) sampled every 250 ms in the window. */
  readonly serverRssMb: number;
}

/** Runs the load generator against `pids`, reading their CPU at the window's start and end. */
export async function runLoad(
  dir: string,
  config: PooledConfig | StormConfig,
  pids: readonly number[],
  pin?: string,
): Promise<LoadRun> {
  const file = join(dir, `load-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(config));
  const gen = spawnJsonLines(process.execPath, [LOADGEN, file], pin === undefined ? {} : { pin });
  try {
    await gen.next("window-start", 600_000);
    const windowStartedAt = performance.now();
    const cpu0 = cpuSecondsOfAll(pids);
    let rss = rssMbOfAll(pids);
    const sampler = setInterval(() => {
      rss = Math.max(rss, rssMbOfAll(pids));
    }, 250);
    const done = await gen.next("result", 900_000);
    clearInterval(sampler);
    return {
      result: done as unknown as LoadResult,
      windowStartedAt,
      serverCpuSeconds: cpuSecondsOfAll(pids) - cpu0,
      serverRssMb: rss,
    };
  } finally {
    await gen.stop();
  }
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** "median (min–max, n runs)" */
export function spread(xs: readonly number[], format: (x: number) => string): string {
  return `${format(median(xs))} (${format(Math.min(...xs))}–${format(Math.max(...xs))}, ${xs.length} runs)`;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One line of the summary table printed at the end. */
export interface Figure {
  readonly n: number;
  readonly what: string;
  readonly measured: string;
  readonly reference: string;
  readonly ratio: string;
  readonly target: string;
  readonly met: boolean | null;
}
