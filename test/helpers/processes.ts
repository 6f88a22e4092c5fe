// Runs the real `osm-cert` CLI as child processes and follows their JSON logs.

import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";

export const CLI = fileURLToPath(new URL("../../cli/main.js", import.meta.url));

export interface LogLine {
  readonly event?: string;
  readonly msg?: string;
  readonly level?: number;
  readonly [key: string]: unknown;
}

export class CliProcess {
  readonly lines: LogLine[] = [];
  stderr = "";
  private readonly waiters = new Set<() => void>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly child: ChildProcess,
    readonly name: string,
  ) {
    let buffered = "";
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      buffered += chunk;
      let newline = buffered.indexOf("\n");
      while (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        try {
          this.lines.push(JSON.parse(line) as LogLine);
        } catch {
          this.lines.push({ msg: line });
        }
        newline = buffered.indexOf("\n");
      }
      for (const wake of this.waiters) wake();
    });
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr += chunk;
    });
    this.exited = once(child, "exit").then(([code, signal]) => {
      for (const wake of this.waiters) wake();
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
  }

  /** Resolves with the first log line matching `predicate`; rejects on timeout or exit. */
  waitFor(predicate: (line: LogLine) => boolean, timeoutMs = 15_000): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      let exited = false;
      void this.exited.then(() => {
        exited = true;
        check();
      });
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(
          new Error(
            `${this.name}: timed out waiting for a log line; stderr: ${this.stderr}; last: ${JSON.stringify(this.lines.slice(-3))}`,
          ),
        );
      }, timeoutMs);
      const check = () => {
        const found = this.lines.find(predicate);
        if (found !== undefined) {
          clearTimeout(timer);
          this.waiters.delete(check);
          resolve(found);
        } else if (exited) {
          clearTimeout(timer);
          this.waiters.delete(check);
          reject(new Error(`${this.name} exited before the expected log line; stderr: ${this.stderr}`));
        }
      };
      this.waiters.add(check);
      check();
    });
  }

  waitForEvent(event: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((line) => line.event === event, timeoutMs);
  }

  async stop(
    signal: NodeJS.Signals = "SIGTERM",
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

export function startCli(name: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new CliProcess(child, name);
}

/** Runs a CLI command to completion. */
export async function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}) {
  const proc = startCli(args[0] ?? "cli", args, env);
  const { code } = await proc.exited;
  return { code, stderr: proc.stderr, lines: proc.lines };
}

/** Starts a server on free loopback ports (CA in `caDir`, or from `extra` flags when null). */
export async function startServerProcess(caDir: string | null, extra: readonly string[] = []) {
  const server = startCli("server", [
    "server",
    ...(caDir === null ? [] : ["--ca-dir", caDir]),
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    ...extra,
  ]);
  const started = await server.waitForEvent("server.started");
  return { server, address: started.address as string, admin: started.admin as string };
}
