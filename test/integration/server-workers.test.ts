// `osm-cert server --workers 2` (issue 12): two processes behind one address. Calls on new
// connections land on both workers (each audit line names its worker; both pids are alive
// processes of this server), the primary's /metrics carries every worker's samples and /readyz is
// ready, and SIGTERM to the primary stops all of them within 3 s with exit code 0.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { makeIdentity } from "../../common/identity.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { bootstrapCert, type KeyedCert, openTestCa, serviceCsrPem, tempDir } from "../helpers/pki.js";
import { runCli, startServerProcess } from "../helpers/processes.js";
import { TestSigningClient } from "../helpers/signing-client.js";

const CALLS = 24;
const EXIT_WITHIN_MS = 3_000;

let dir: Awaited<ReturnType<typeof tempDir>>;
let caDir: string;
let rootPem: string;
let boot: KeyedCert;
const identity = makeIdentity("bookstore-v2", "bookstore");

before(async () => {
  dir = await tempDir();
  caDir = join(dir.path, "ca");
  const ca: TresorProvider = await openTestCa(caDir);
  rootPem = ca.trustBundle().roots.join("");
  boot = await bootstrapCert(ca, identity);
});

after(async () => {
  await dir?.remove();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test("--workers 2: calls on new connections land on both workers; SIGTERM stops every process", async (t) => {
  const { server, address, admin } = await startServerProcess(caDir, ["--workers", "2"]);
  const started = server.lines.find((l) => l.event === "server.started");
  const pids = started?.workerPids as number[];
  try {
    assert.equal(started?.workers, 2);
    assert.equal(pids.length, 2);
    assert.notEqual(pids[0], pids[1]);
    for (const pid of pids) assert.ok(alive(pid), `worker ${pid} runs`);
    assert.ok(!pids.includes(server.child.pid as number), "the primary serves no gRPC itself");

    // Each call on a connection of its own (as each pod has): the primary hands connections out in turn.
    const csr = await serviceCsrPem("bookstore-v2", "bookstore");
    for (let i = 0; i < CALLS; i++) {
      const client = new TestSigningClient(address, rootPem, boot, undefined, {
        "grpc.use_local_subchannel_pool": 1,
      });
      try {
        const response = await client.create(csr);
        assert.equal(response.certificate_chain.length > 0, true);
      } finally {
        client.close();
      }
    }
    await server.waitForEvent("certificate.issued");
    const deadline = Date.now() + 5_000;
    const byWorker = () => {
      const counts = new Map<unknown, number>();
      for (const line of server.lines) {
        if (line.event === "certificate.issued") counts.set(line.worker, (counts.get(line.worker) ?? 0) + 1);
      }
      return counts;
    };
    while ([...byWorker().values()].reduce((a, b) => a + b, 0) < CALLS && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const counts = byWorker();
    t.diagnostic(`issued by worker: ${JSON.stringify([...counts])}`);
    assert.equal(
      [...counts.values()].reduce((a, b) => a + b, 0),
      CALLS,
    );
    assert.deepEqual([...counts.keys()].sort(), [1, 2], "both workers signed");

    // The primary's admin endpoint speaks for all of them.
    const metrics = await (await fetch(`http://${admin}/metrics`)).text();
    for (const worker of ["1", "2"]) {
      const sample = new RegExp(
        `^osm_cert_server_issuance_total\\{worker="${worker}",code="OK",provider="tresor"\\} (\\d+)$`,
        "m",
      ).exec(metrics);
      assert.ok(sample !== null && Number(sample[1]) > 0, `worker ${worker} counted in /metrics`);
    }
    assert.match(metrics, /^osm_cert_server_workers\{worker="primary"\} 2$/m);
    assert.equal((await fetch(`http://${admin}/readyz`)).status, 200);

    const signalled = performance.now();
    server.child.kill("SIGTERM");
    const exit = await server.exited;
    const tookMs = performance.now() - signalled;
    t.diagnostic(`all processes gone ${Math.round(tookMs)} ms after SIGTERM`);
    assert.deepEqual(exit, { code: 0, signal: null });
    for (const pid of pids) assert.ok(!alive(pid), `worker ${pid} stopped`);
    assert.ok(tookMs < EXIT_WITHIN_MS, `exited after ${Math.round(tookMs)} ms`);
    assert.equal(server.lines.filter((l) => l.event === "server.worker_stopped").length, 2);
  } finally {
    await server.stop("SIGKILL");
    for (const pid of pids ?? []) if (alive(pid)) process.kill(pid, "SIGKILL");
  }
});

test("--workers rejects what is not a count", async () => {
  const result = await runCli(["server", "--ca-dir", caDir, "--workers", "0"]);
  assert.equal(result.code, 2);
  assert.match(result.stderr, /invalid --workers/);
});
