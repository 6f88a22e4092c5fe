// The agent's V8 tiers (agent/v8-tiers.ts): after applyAgentV8Tiers() a warm function stays in the
// interpreter instead of going to Sparkplug; without it the same function does reach Sparkplug
// (so the probe can tell the two apart).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";

const MODULE = JSON.stringify(new URL("../../agent/v8-tiers.js", import.meta.url).href);

/** The tier a small function kept from TurboFan reaches after 30,000 calls, in a fresh process. */
function tierAfterWarmUp(apply: boolean): string {
  return execFileSync(
    process.execPath,
    [
      "--allow-natives-syntax",
      "--input-type=module",
      "-e",
      `const { applyAgentV8Tiers } = await import(${MODULE});
       if (${apply}) applyAgentV8Tiers();
       function warm(x) { return x + 1; }
       %NeverOptimizeFunction(warm);
       for (let i = 0; i < 30000; i++) warm(i);
       process.stdout.write(%ActiveTierIsSparkplug(warm) ? "sparkplug" : %ActiveTierIsTurbofan(warm) ? "turbofan" : %ActiveTierIsIgnition(warm) ? "ignition" : "other");`,
    ],
    { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: "" } },
  );
}

test("the agent's V8 tiers: no Sparkplug", () => {
  assert.equal(tierAfterWarmUp(false), "sparkplug", "the probe must see Sparkplug when it is on");
  assert.equal(tierAfterWarmUp(true), "ignition");
});
