// Runs the real `osm-cert` CLI as child processes and follows their JSON logs.

import { CLI, CliProcess, type LogLine, startCli } from "../../cli/child-process.js";

export { CLI, CliProcess, type LogLine, startCli };

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
