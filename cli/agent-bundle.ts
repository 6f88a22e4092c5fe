// `osm-cert agent` runs from one bundled file (DESIGN.md §12: start-up time and memory are product
// features). scripts/bundle-agent.mjs bundles agent/main.ts and everything it reaches into
// dist/agent.bundle.cjs and stores V8's code cache for it next to it; this module runs that file the
// way Node runs a CommonJS module, but with the cache, so the agent neither resolves ~150 modules one
// by one nor parses half a megabyte of JavaScript at start-up.
//
// A cache made by another V8 (or for other source) is rejected by V8 itself and the file is simply
// compiled as usual: the cache only ever saves time.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";
import * as flags from "../common/flags.js";

export const AGENT_BUNDLE = fileURLToPath(new URL("../agent.bundle.cjs", import.meta.url));
export const AGENT_BUNDLE_CACHE = `${AGENT_BUNDLE}.cache`;

/**
 * Modules the bundle takes from the unbundled CLI instead of carrying its own copy, so that a
 * FlagError thrown inside the bundle is the class cli/main.ts tests with instanceof.
 */
const SHARED: Readonly<Record<string, unknown>> = { "common/flags.js": flags };

export type AgentModule = typeof import("../agent/main.js");

export interface LoadedAgentBundle {
  readonly agent: AgentModule;
  /** The compiled script, from which the build makes the code cache. */
  readonly script: Script;
  /** Whether V8 accepted the stored code cache (false also when there was none). */
  readonly cacheAccepted: boolean;
}

export function loadAgentBundle(options: { useCache?: boolean } = {}): LoadedAgentBundle {
  const source = readFileSync(AGENT_BUNDLE, "utf8");
  let cachedData: Buffer | undefined;
  if (options.useCache !== false) {
    try {
      cachedData = readFileSync(AGENT_BUNDLE_CACHE);
    } catch {
      // No cache: compile as usual.
    }
  }
  const script = new Script(
    `(function (exports, require, module, __filename, __dirname, __osmCertShared) {${source}\n})`,
    { filename: AGENT_BUNDLE, cachedData },
  );
  const module = { exports: {} };
  const run = script.runInThisContext() as (...args: unknown[]) => void;
  run(module.exports, createRequire(AGENT_BUNDLE), module, AGENT_BUNDLE, dirname(AGENT_BUNDLE), SHARED);
  return {
    agent: module.exports as AgentModule,
    script,
    cacheAccepted: cachedData !== undefined && script.cachedDataRejected === false,
  };
}
