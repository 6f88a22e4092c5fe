// The soak's own helpers, each in a process of its own: the TCP balancer (as kube-proxy is not in
// Envoy's process) and the Envoy-like checking clients, a share of the agents per process. In the
// soak's driver process they shared one event loop: under load a certificate pushed in time could be
// read late there, and a gap then measured the harness, not the agent.
//
// The same file is the child's entry point (`node harness-processes.js balancer|checkers ...`) and
// the parent's handle on it; they talk over Node's IPC channel.

import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { CheckingEnvoy, type HeldCertificate } from "../helpers/checking-envoy.js";
import { TcpBalancer, type TcpBalancerOptions } from "../helpers/tcp-balancer.js";

/** What one checking client saw. */
export interface CheckerReport {
  readonly held: readonly HeldCertificate[];
  readonly violations: readonly string[];
  readonly reconnects: number;
}

type Request = { readonly id: number; readonly op: string; readonly args?: unknown };
type Reply = { readonly id: number; readonly result?: unknown; readonly error?: string };

/** A child process answering requests by id. */
class Child {
  private nextId = 0;
  private readonly pending = new Map<number, (reply: Reply) => void>();
  readonly exited: Promise<void>;

  constructor(readonly process: ChildProcess) {
    process.on("message", (reply: Reply) => {
      this.pending.get(reply.id)?.(reply);
      this.pending.delete(reply.id);
    });
    this.exited = new Promise((resolve) => process.once("exit", () => resolve()));
    void this.exited.then(() => {
      for (const answer of this.pending.values()) answer({ id: -1, error: "harness process exited" });
      this.pending.clear();
    });
  }

  static start(role: string, args: readonly string[]): Child {
    const entry = fileURLToPath(import.meta.url);
    return new Child(fork(entry, [role, ...args], { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
  }

  ask<T>(op: string, args?: unknown): Promise<T> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, (reply) =>
        reply.error === undefined ? resolve(reply.result as T) : reject(new Error(reply.error)),
      );
      this.process.send({ id, op, args } satisfies Request);
    });
  }

  async stop(): Promise<void> {
    await this.ask("close").catch(() => undefined);
    await this.exited;
  }
}

/** The TCP balancer in a child process. */
export class BalancerProcess {
  private constructor(
    private readonly child: Child,
    readonly address: string,
  ) {}

  static async start(
    backends: readonly string[],
    options: TcpBalancerOptions = {},
  ): Promise<BalancerProcess> {
    const child = Child.start("balancer", [JSON.stringify(options), ...backends]);
    return new BalancerProcess(child, await child.ask<string>("address"));
  }

  replace(index: number, backend: string): Promise<void> {
    return this.child.ask("replace", { index, backend });
  }

  close(): Promise<void> {
    return this.child.stop();
  }
}

/** Checking clients on the given SDS sockets, in a child process. */
export class CheckerProcess {
  private constructor(private readonly child: Child) {}

  static async start(sockets: readonly string[]): Promise<CheckerProcess> {
    const child = Child.start("checkers", sockets);
    await child.ask("ready");
    return new CheckerProcess(child);
  }

  /** Gaps and invalid certificates seen so far, summed over this process's clients. */
  summary(): Promise<{ gaps: number; invalid: number }> {
    return this.child.ask("summary");
  }

  /** One report per socket, in the order given at start. */
  reports(): Promise<CheckerReport[]> {
    return this.child.ask("reports");
  }

  close(): Promise<void> {
    return this.child.stop();
  }
}

// ----- the child side ------------------------------------------------------------------------

function serve(handlers: Record<string, (args: unknown) => unknown>): void {
  process.on("message", async ({ id, op, args }: Request) => {
    const handler = handlers[op];
    try {
      if (handler === undefined) throw new Error(`unknown request ${op}`);
      process.send?.({ id, result: await handler(args) } satisfies Reply);
    } catch (error) {
      process.send?.({ id, error: (error as Error).message } satisfies Reply);
    }
    if (op === "close") process.disconnect();
  });
}

async function runBalancer([options, ...backends]: string[]): Promise<void> {
  const balancer = await TcpBalancer.start(backends, JSON.parse(options ?? "{}") as TcpBalancerOptions);
  serve({
    address: () => balancer.address,
    replace: (args) => {
      const { index, backend } = args as { index: number; backend: string };
      balancer.replace(index, backend);
    },
    close: () => balancer.close(),
  });
}

function runCheckers(sockets: string[]): void {
  const envoys = sockets.map((socket) => new CheckingEnvoy({ socket }));
  serve({
    ready: () => true,
    summary: () => ({
      gaps: envoys.reduce((n, e) => n + e.gaps, 0),
      invalid: envoys.reduce((n, e) => n + e.invalidServed, 0),
    }),
    reports: (): CheckerReport[] =>
      envoys.map((e) => ({ held: e.held, violations: e.violations, reconnects: e.reconnects })),
    close: async () => {
      await Promise.all(envoys.map((e) => e.close()));
    },
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [role, ...args] = process.argv.slice(2);
  if (role === "balancer") await runBalancer(args);
  else if (role === "checkers") runCheckers(args);
  else throw new Error(`unknown harness role ${role}`);
}
