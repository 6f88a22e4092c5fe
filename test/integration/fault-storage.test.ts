// Storage faults (issue 10, Deliver 1): where the CA is kept refuses writes. Promised: a clear error
// naming what could not be written, nothing half-written left behind, and an existing root never
// damaged (its bytes compared before and after).
// - A full disk is made real and unprivileged with a file-size limit (`ulimit -f`, RLIMIT_FSIZE): the
//   kernel refuses the write with EFBIG as it refuses one on a full disk with ENOSPC (chmod does not
//   stop root, which these tests may run as).
// - A Kubernetes API that loses a write: every create of the CA Secret answers 409 AlreadyExists yet
//   nothing is there to read (the fake API server's faithful 409).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { openTestCa, tempDir } from "../helpers/pki.js";
import { CLI, CliProcess, startServerProcess } from "../helpers/processes.js";

const FAKE = fileURLToPath(new URL("../fakes/kube-apiserver-process.js", import.meta.url));

let dir: Awaited<ReturnType<typeof tempDir>>;

before(async () => {
  dir = await tempDir();
});

after(async () => {
  await dir?.remove();
});

/** The CLI with RLIMIT_FSIZE set to `blocks` × 1024 bytes: writes past it fail with EFBIG. */
function cliWithFileLimit(name: string, blocks: number, args: readonly string[]): CliProcess {
  const child = spawn(
    "bash",
    ["-c", `ulimit -f ${blocks} && exec "$0" "$@"`, process.execPath, CLI, ...args],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  return new CliProcess(child, name);
}

async function fingerprints(caDir: string): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  for (const file of ["ca.crt", "private.key", "expiration"]) {
    result[file] = createHash("sha256")
      .update(await readFile(join(caDir, file)))
      .digest("hex");
  }
  return result;
}

test("first start on a full disk: exit 1 naming the file and the cause, nothing left behind, a later start works", async () => {
  const caDir = join(dir.path, "fresh");
  const server = cliWithFileLimit("server", 0, [
    "server",
    "--ca-dir",
    caDir,
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
  ]);
  const { code } = await server.exited;
  assert.equal(code, 1);
  assert.match(server.stderr, /could not write private\.key: EFBIG: file too large.*disk full/);
  assert.match(server.stderr, new RegExp(`CA directory ${caDir}`));
  // Neither a partial temporary file nor a half-published CA that the next start must refuse.
  assert.deepEqual(await readdir(caDir), []);
  const again = await startServerProcess(caDir);
  await again.server.stop();
  assert.deepEqual((await readdir(caDir)).sort(), ["ca.crt", "expiration", "private.key"]);
});

test("rotate-root on a full disk: exit 1 with a clear error, the existing root untouched, the server still starts with it", async () => {
  const caDir = join(dir.path, "existing");
  await openTestCa(caDir);
  const before = await fingerprints(caDir);
  // Every file rotate-root writes is under 1 KiB, so only a limit of 0 makes them fail.
  const rotate = cliWithFileLimit("rotate-root", 0, [
    "rotate-root",
    "--ca-dir",
    caDir,
    "--wait-agents",
    "1s",
  ]);
  const guard = setTimeout(() => rotate.child.kill("SIGKILL"), 30_000);
  const { code } = await rotate.exited;
  clearTimeout(guard);
  assert.equal(code, 1, rotate.stderr);
  assert.match(rotate.stderr, /could not write private\.key: EFBIG: file too large/);
  assert.doesNotMatch(rotate.stderr, /\n\s+at /, "one line, not a stack trace");
  assert.deepEqual(await fingerprints(caDir), before, "the root's files changed");
  const leftovers = (await readdir(caDir, { recursive: true })).filter((f) => String(f).includes(".tmp-"));
  assert.deepEqual(leftovers, [], "no temporary file left behind");
  const { server, address } = await startServerProcess(caDir);
  try {
    assert.ok(address);
    assert.deepEqual(await fingerprints(caDir), before);
  } finally {
    await server.stop();
  }
});

test("Kubernetes API that loses the CA Secret's create (409 AlreadyExists, nothing to read): bounded retries, exit 1 with a clear error", async () => {
  const kubeconfig = join(dir.path, "kubeconfig.json");
  const fake = new CliProcess(
    spawn(process.execPath, [FAKE, kubeconfig], { stdio: ["ignore", "pipe", "pipe"] }),
    "fake-apiserver",
  );
  try {
    const control = String((await fake.waitForEvent("fake.started")).control);
    const post = (path: string, body: unknown) =>
      fetch(`${control}${path}`, { method: "POST", body: JSON.stringify(body) }).then((r) => r.json());
    await post("/fail", { count: 1000, status: 409, match: { verb: "create", resource: "secrets" } });
    const started = Date.now();
    const server = new CliProcess(
      spawn(
        process.execPath,
        [
          CLI,
          "server",
          "--kubeconfig",
          kubeconfig,
          "--listen",
          "127.0.0.1:0",
          "--admin-listen",
          "127.0.0.1:0",
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
      ),
      "server",
    );
    const { code } = await server.exited;
    assert.equal(code, 1);
    assert.ok(Date.now() - started < 30_000, "gave up in bounded time");
    assert.match(server.stderr, /osm-ca-bundle.*exists and vanishes again on every read/);
    const requests = (await (await fetch(`${control}/requests`)).json()) as {
      verb: string;
      resource: string;
    }[];
    const creates = requests.filter((r) => r.verb === "create" && r.resource === "secrets").length;
    assert.ok(creates >= 2 && creates <= 10, `${creates} creates: bounded, not a loop`);
    const secrets = (await (
      await fetch(`${control}/objects?resource=secrets&namespace=osm-system`)
    ).json()) as unknown[];
    assert.deepEqual(secrets, [], "nothing half-written");

    // The writes come back: the next start creates the root, and one after that keeps it byte for byte.
    await post("/clear", {});
    const first = await startServerProcess(null, ["--kubeconfig", kubeconfig]);
    await first.server.stop();
    const stored = JSON.stringify(
      await (await fetch(`${control}/objects?resource=secrets&namespace=osm-system`)).json(),
    );
    await post("/fail", {
      count: 1000,
      status: 409,
      match: { verb: ["create", "update", "patch"], resource: "secrets" },
    });
    const second = await startServerProcess(null, ["--kubeconfig", kubeconfig]);
    await second.server.stop();
    assert.equal(
      JSON.stringify(await (await fetch(`${control}/objects?resource=secrets&namespace=osm-system`)).json()),
      stored,
      "the existing root Secret is untouched",
    );
  } finally {
    await fake.stop();
  }
});
