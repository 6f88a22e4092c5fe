// The V8 compiler tiers the agent runs with (issue 12, figure 4).
//
// V8 has three tiers for JavaScript in Node 20: the Ignition interpreter, the Sparkplug baseline
// compiler (warm functions: machine code made from the bytecode, no optimisation) and TurboFan
// (hot functions). The agent runs little code, most of it rarely: what gets warm enough for
// Sparkplug is also what TurboFan takes over when it matters (a rotation pushed to many SDS
// streams), so Sparkplug's code (kept next to the bytecode, executable pages of their own) buys
// the agent nothing it can measure and costs ≈ 1.6 MB of RSS with 100 SDS streams after 100
// rotations; without it the fan-out to 1,000 streams (figure 6) took no longer (README, Benchmarks).
// TurboFan stays: without it (--no-opt, --jitless) the agent's own writing of a rotation to 1,000
// streams doubled.
//
// Set at run time because Node accepts neither --no-sparkplug nor --max-opt in NODE_OPTIONS, and
// after the bundle is loaded because V8 rejects a code cache made under other flags
// (scripts/bundle-agent.mjs makes it under common/agent-node-options.ts's flags). V8 reads the flag
// each time it considers a function for Sparkplug, so from here on none is compiled by it.

import { setFlagsFromString } from "node:v8";

export const AGENT_V8_RUNTIME_FLAGS = "--no-sparkplug";

/** Turns Sparkplug off for the rest of the process (the agent's own command only, not its tests). */
export function applyAgentV8Tiers(): void {
  setFlagsFromString(AGENT_V8_RUNTIME_FLAGS);
}
