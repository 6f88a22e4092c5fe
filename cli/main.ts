#!/usr/bin/env node
// The osm-cert command line. Subcommands load lazily so `osm-cert agent` never pays for the
// server's modules and vice versa.

import { FlagError, HelpRequested } from "../common/flags.js";

const COMMANDS: Readonly<
  Record<string, { summary: string; run: (argv: readonly string[]) => Promise<void> }>
> = {
  server: {
    summary: "run the signing server",
    run: async (argv) => (await import("../server/main.js")).serverCommand(argv),
  },
  agent: {
    summary: "run the per-pod agent (SDS for Envoy)",
    // One bundled file built from agent/main.ts, with V8's code cache (cli/agent-bundle.ts).
    run: async (argv) => (await import("./agent-bundle.js")).loadAgentBundle().agent.agentCommand(argv),
  },
  issue: {
    summary: "issue an xDS bootstrap or webhook certificate",
    run: async (argv) => (await import("./issue.js")).issueCommand(argv),
  },
  "envoy-bootstrap": {
    summary: "print Envoy's SDS cluster and secret configs (or a whole bootstrap)",
    run: async (argv) => (await import("./envoy-bootstrap.js")).envoyBootstrapCommand(argv),
  },
  webhook: {
    summary: "run the injection webhook (adds the agent to OSM's pods)",
    run: async (argv) => (await import("../webhook/main.js")).webhookCommand(argv),
  },
  "rotate-root": {
    summary: "rotate the mesh root with zero downtime (resumable phases)",
    run: async (argv) => (await import("./rotate-root.js")).rotateRootCommand(argv),
  },
  renew: {
    summary: "make agents renew now (--all | --namespace NS | --identity NS/SA), spread over --window",
    run: async (argv) => (await import("./renew.js")).renewCommand(argv),
  },
  demo: {
    summary: "the whole flow on one machine",
    run: async (argv) => (await import("./demo.js")).demoCommand(argv),
  },
};

function usage(): string {
  const lines = ["Usage: osm-cert <command> [flags]", "", "Commands:"];
  for (const [name, { summary }] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(16)} ${summary}`);
  lines.push("", "Run `osm-cert <command> --help` for its flags.");
  return `${lines.join("\n")}\n`;
}

/** The version in package.json, which ships beside dist/ (in the image too). */
async function version(): Promise<string> {
  const { readFile } = await import("node:fs/promises");
  const text = await readFile(new URL("../../package.json", import.meta.url), "utf8");
  return (JSON.parse(text) as { version: string }).version;
}

async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === "--version" || name === "-v" || name === "version") {
    process.stdout.write(`osm-cert ${await version()}\n`);
    return 0;
  }
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    process.stderr.write(`osm-cert: unknown command "${name}"\n${usage()}`);
    return 2;
  }
  try {
    await command.run(rest);
    return 0;
  } catch (error) {
    if (error instanceof HelpRequested) {
      process.stdout.write(error.message);
      return 0;
    }
    if (error instanceof FlagError) {
      process.stderr.write(`osm-cert ${error.message}\n`);
      return 2;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`osm-cert ${name}: ${message}\n`);
    return 1;
  }
}

// A failed command exits now: whatever it started before failing (a file watcher, a socket) must
// not keep a process alive that a pod would then never restart. stderr is synchronous for files
// and pipes, so the message is out before the exit.
main(process.argv.slice(2)).then(
  (code) => {
    if (code === 0) process.exitCode = 0;
    else process.exit(code);
  },
  (error: unknown) => {
    process.stderr.write(`osm-cert: ${String(error)}\n`);
    process.exit(1);
  },
);
