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
const result = spawnSync(process.execPath, ["--test", "--test-concurrency=2", ...files], {
  stdio: "inherit",
});
process.exit(result.status ?? 1);
