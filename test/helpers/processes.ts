// Runs the real `osm-cert` CLI as child processes and follows their JSON logs.

import { join } from "node:path";
import { CLI, CliProcess, type LogLine, startCli } from "../../cli/child-process.js";

export { CLI, CliProcess, type LogLine, startCli };

/** Runs a CLI command to completion. */
export async function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}) {
  const proc = startCli(args[0] ?? "cli", args, env);
  const { code } = await proc.exited;
  return { code, stderr: proc.stderr, lines: proc.lines };
}

/**
 * Starts a server on free loopback ports (CA in `caDir`, or from `extra` flags when null), waiting
 * up to `startTimeoutMs` for it to say it started.
 */
export async function startServerProcess(
  caDir: string | null,
  extra: readonly string[] = [],
  startTimeoutMs = 15_000,
) {
  const server = startCli("server", [
    "server",
    ...(caDir === null ? [] : ["--ca-dir", caDir]),
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    ...extra,
  ]);
  // A server that never says it started is stopped, not left running behind a failed test.
  const started = await server.waitForEvent("server.started", startTimeoutMs).catch(async (error: Error) => {
    await server.stop("SIGKILL");
    throw error;
  });
  return { server, address: started.address as string, admin: started.admin as string };
}

/** `osm-cert issue bootstrap` for `namespace/serviceAccount` from `caDir` into `out` (tls.crt, tls.key, ca.crt). */
export async function issueBootstrapDir(
  caDir: string,
  out: string,
  namespace: string,
  serviceAccount: string,
): Promise<string> {
  const result = await runCli([
    "issue",
    "bootstrap",
    "--namespace",
    namespace,
    "--service-account",
    serviceAccount,
    "--ca-dir",
    caDir,
    "--out",
    out,
  ]);
  if (result.code !== 0) throw new Error(`osm-cert issue bootstrap exited ${result.code}: ${result.stderr}`);
  return out;
}

/** An agent authenticated by the bootstrap directory `bootstrapDir` (tls.crt, tls.key, ca.crt), admin on a free port. */
export function startBootstrapAgent(options: {
  readonly server: string;
  readonly bootstrapDir: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly socket: string;
  readonly name?: string;
  readonly extra?: readonly string[];
}): CliProcess {
  const { bootstrapDir } = options;
  return startCli(options.name ?? "agent", [
    "agent",
    "--server",
    options.server,
    "--ca-bundle",
    join(bootstrapDir, "ca.crt"),
    "--namespace",
    options.namespace,
    "--service-account",
    options.serviceAccount,
    "--bootstrap-cert",
    join(bootstrapDir, "tls.crt"),
    "--bootstrap-key",
    join(bootstrapDir, "tls.key"),
    "--sds-socket",
    options.socket,
    "--admin-listen",
    "127.0.0.1:0",
    ...(options.extra ?? []),
  ]);
}
