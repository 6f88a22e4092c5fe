// The agent's collection after a released connection (agent/native-memory.ts): one per burst of
// identity changes, after the delay, never without V8's gc, cancelled at shutdown; and the injected
// container's NODE_OPTIONS do expose gc.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { exposedGc, ReleasedConnectionCollector } from "../../agent/native-memory.js";
import { AGENT_NODE_OPTIONS } from "../../common/agent-node-options.js";

test("one collection per burst of released connections, after the delay", async () => {
  let collections = 0;
  const collector = new ReleasedConnectionCollector(() => collections++, 50);
  collector.connectionReleased();
  collector.connectionReleased();
  collector.connectionReleased();
  assert.equal(collections, 0, "not at once: the old connection is still closing");
  await sleep(300);
  assert.equal(collections, 1);
  collector.connectionReleased();
  await sleep(300);
  assert.equal(collections, 2, "a later release gets a collection of its own");
});

test("close() cancels a pending collection; without gc nothing is scheduled", async () => {
  let collections = 0;
  const collector = new ReleasedConnectionCollector(() => collections++, 50);
  collector.connectionReleased();
  collector.close();
  await sleep(300);
  assert.equal(collections, 0);
  const withoutGc = new ReleasedConnectionCollector(null, 50);
  withoutGc.connectionReleased();
  await sleep(100);
  withoutGc.close();
});

test("the injected agent's NODE_OPTIONS expose gc to the agent; plain node does not", async () => {
  const probe = (nodeOptions: string) =>
    execFileSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `const { exposedGc } = await import(${JSON.stringify(new URL("../../agent/native-memory.js", import.meta.url).href)});
         process.stdout.write(String(exposedGc() !== null));`,
      ],
      { encoding: "utf8", env: { ...process.env, NODE_OPTIONS: nodeOptions } },
    );
  assert.equal(probe(AGENT_NODE_OPTIONS), "true");
  assert.equal(probe(""), "false");
  assert.equal(exposedGc() === null, typeof (globalThis as { gc?: unknown }).gc !== "function");
});
