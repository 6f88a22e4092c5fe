import assert from "node:assert/strict";
import { mkdir, rename, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { ProjectedToken } from "../../agent/projected-token.js";
import { captureLog } from "../helpers/log-capture.js";
import { tempDir } from "../helpers/pki.js";

/** Lays out a token the way the kubelet does: token -> ..data/token, ..data -> ..<timestamp>. */
async function kubeletWrite(dir: string, generation: number, token: string): Promise<void> {
  const versioned = join(dir, `..2026_11_28_12_00_0${generation}.000000000`);
  await mkdir(versioned);
  await writeFile(join(versioned, "token"), token);
  await symlink(versioned.split("/").pop() as string, join(dir, "..data_tmp"));
  await rename(join(dir, "..data_tmp"), join(dir, "..data")); // the atomic swap
}

test("the agent picks up a kubelet token rotation (atomic ..data swap) without restart", async () => {
  const dir = await tempDir();
  const log = captureLog();
  const token = new ProjectedToken(join(dir.path, "token"), log.logger, 60_000);
  try {
    await kubeletWrite(dir.path, 1, "first-token");
    await symlink("..data/token", join(dir.path, "token"));
    await token.start();
    assert.equal(token.current(), "first-token");
    await kubeletWrite(dir.path, 2, "second-token");
    const deadline = Date.now() + 5_000;
    while (token.current() !== "second-token" && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(token.current(), "second-token");
    assert.ok(log.lines.some((l) => l.event === "token.reloaded"));
    assert.ok(!JSON.stringify(log.lines).includes("second-token"), "the token itself is never logged");
  } finally {
    await token.close();
    await dir.remove();
  }
});

test("an empty or missing token file fails start-up clearly", async () => {
  const dir = await tempDir();
  try {
    await writeFile(join(dir.path, "token"), "\n");
    await assert.rejects(
      new ProjectedToken(join(dir.path, "token"), captureLog().logger).start(),
      /empty or malformed/,
    );
    await rm(join(dir.path, "token"));
    await assert.rejects(new ProjectedToken(join(dir.path, "token"), captureLog().logger).start(), /ENOENT/);
  } finally {
    await dir.remove();
  }
});
