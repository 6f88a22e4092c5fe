// The bundled agent (scripts/bundle-agent.mjs, loaded by cli/agent-bundle.ts) that `osm-cert agent`
// runs: it loads with its code cache, loads nothing from node_modules at run time, and shares the
// CLI's flag errors. The integration tests run the real agent through it.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { loadAgentBundle } from "../../cli/agent-bundle.js";
import { AGENT_NODE_OPTIONS } from "../../common/agent-node-options.js";
import { FlagError, HelpRequested } from "../../common/flags.js";

const LOADER = new URL("../../cli/agent-bundle.js", import.meta.url).href;

test("the agent bundle loads with the code cache made at build time, under the injected agent's NODE_OPTIONS", () => {
  const { agent } = loadAgentBundle();
  assert.equal(typeof agent.agentCommand, "function");
  assert.equal(typeof agent.startAgent, "function");
  // V8 accepts a code cache only under the flags it was made with: the container's NODE_OPTIONS.
  const accepted = (nodeOptions: string) =>
    execFileSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `const { loadAgentBundle } = await import(${JSON.stringify(LOADER)});
         process.stdout.write(String(loadAgentBundle().cacheAccepted));`,
      ],
      { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: nodeOptions } },
    );
  assert.equal(
    accepted(AGENT_NODE_OPTIONS),
    "true",
    "V8 rejected dist/agent.bundle.cjs.cache: rebuild with npm run build",
  );
});

test("flag errors thrown inside the bundle are the CLI's classes (exit code 2, --help)", async () => {
  const { agent } = loadAgentBundle();
  await assert.rejects(agent.agentCommand(["--no-such-flag"]), FlagError);
  await assert.rejects(agent.agentCommand(["--help"]), HelpRequested);
});

test("loading the agent reads no module from node_modules (everything it needs is in the bundle)", () => {
  const script = `
    const { createRequire } = await import("node:module");
    const { loadAgentBundle } = await import(${JSON.stringify(LOADER)});
    loadAgentBundle();
    const cache = createRequire(import.meta.url).cache;
    process.stdout.write(JSON.stringify(Object.keys(cache).filter((f) => f.includes("node_modules"))));
  `;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.deepEqual(JSON.parse(out), []);
});
