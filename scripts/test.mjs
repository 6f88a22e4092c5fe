// Runs every compiled *.test.js under dist/test with Node's test runner. Node 20 has no glob
// support in --test and would treat helper modules under test/ as test files, so we list them.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const root = new URL("../dist/test", import.meta.url).pathname;
const filter = process.argv[2];
const files = readdirSync(root, { recursive: true })
  .map(String)
  .filter((f) => f.endsWith(".test.js") && (filter === undefined || f.includes(filter)))
  .map((f) => join(root, f))
  .sort();
if (files.length === 0) {
  console.error("no test files found under dist/test");
  process.exit(1);
}
// A hung test fails with its name after 5 minutes instead of stalling the whole run (and CI), and a
// file whose tests all finished exits even if a failed test left a handle open (seen once in
// leader-election.test.ts under heavy load: its failure, not the leak, is what the run reports).
const result = spawnSync(
  process.execPath,
  ["--test", "--test-concurrency=2", "--test-timeout=300000", "--test-force-exit", ...files],
  {
    stdio: "inherit",
  },
);
process.exit(result.status ?? 1);
