// A child `osm-cert` process whose JSON log lines are followed, so a caller can wait for an event
// (the demo here; the integration tests and benchmarks reuse it).

import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";

export const CLI = fileURLToPath(new URL("./main.js", import.meta.url));

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
      this.wake();
    });
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr += chunk;
    });
    this.exited = once(child, "exit").then(([code, signal]) => {
      this.wake();
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
  }

  /** Resolves with the first log line matching `predicate`; rejects on timeout or exit. */
  waitFor(
    predicate: (line: LogLine) => boolean,
    timeoutMs = 15_000,
    what = "the expected log line",
  ): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      const finish = (error: Error | null, line?: LogLine) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        if (error) reject(error);
        else resolve(line as LogLine);
      };
      const timer = setTimeout(
        () => finish(new Error(`${this.name}: no ${what} within ${timeoutMs} ms ${this.tail()}`)),
        timeoutMs,
      );
      const check = () => {
        const found = this.lines.find(predicate);
        if (found !== undefined) finish(null, found);
        else if (this.child.exitCode !== null || this.child.signalCode !== null) {
          finish(
            new Error(`${this.name} exited (code ${this.child.exitCode}) before ${what} ${this.tail()}`),
          );
        }
      };
      this.waiters.add(check);
      check();
    });
  }

  waitForEvent(event: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((line) => line.event === event, timeoutMs, `"${event}" event`);
  }

  async stop(
    signal: NodeJS.Signals = "SIGTERM",
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }

  private wake(): void {
    for (const wake of [...this.waiters]) wake();
  }

  private tail(): string {
    const last = this.lines.slice(-3).map((l) => JSON.stringify(l));
    return `(stderr: ${this.stderr.trim() || "-"}; last log: ${last.join(" ") || "-"})`;
  }
}

export function startCli(name: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new CliProcess(child, name);
}
