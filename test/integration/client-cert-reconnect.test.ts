// Regression (found during issue 9, fixed for issue 10): a TLS connection presents the client
// certificate of its handshake for its whole life. After a server restart an agent reconnects
// presenting its current short-lived service certificate; once that expired, every renewal on the
// still-open connection was refused (UNAUTHENTICATED, "client certificate expired") although the
// agent held a newer certificate, until the served one expired too. Each installed identity now
// gets its own connection. Real server and agent processes, 4-second certificates, the connection
// kept up across several rotations past the first certificate's expiry.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { tempDir } from "../helpers/pki.js";
import {
  type CliProcess,
  issueBootstrapDir,
  startBootstrapAgent,
  startCli,
  startServerProcess,
} from "../helpers/processes.js";

const VALIDITY_MS = 4_000;

let dir: Awaited<ReturnType<typeof tempDir>>;
let server: CliProcess;
let agent: CliProcess;

before(async () => {
  dir = await tempDir();
});

after(async () => {
  await agent?.stop();
  await server?.stop();
  await dir.remove();
});

test("renewals keep succeeding over a reconnected connection past the expiry of the certificate it was opened with", async () => {
  const caDir = join(dir.path, "ca");
  const first = await startServerProcess(caDir);
  server = first.server;
  const bootstrap = await issueBootstrapDir(caDir, join(dir.path, "boot"), "bookstore", "bookstore-v2");
  agent = startBootstrapAgent({
    server: first.address,
    bootstrapDir: bootstrap,
    namespace: "bookstore",
    serviceAccount: "bookstore-v2",
    socket: join(dir.path, "sds.sock"),
    extra: ["--cert-validity", `${VALIDITY_MS / 1000}s`, "--rotation-fraction", "0.5"],
  });
  // Two rotations: the agent now presents a service certificate, not its bootstrap one.
  const rotated = (from = 0) => agent.lines.slice(from).filter((l) => l.event === "certificate.rotated");
  await agent.waitFor(() => rotated().length >= 2, 20_000, "two rotations");

  // The server restarts on the same address: the agent's next connection is opened with the
  // service certificate it holds at that moment, which expires 4 s later at the latest.
  await server.stop("SIGKILL");
  const killed = agent.lines.length;
  server = startCli("server", [
    "server",
    "--ca-dir",
    caDir,
    "--listen",
    first.address,
    "--admin-listen",
    "127.0.0.1:0",
  ]);
  await server.waitForEvent("server.started");
  await agent.waitFor(() => rotated(killed).length >= 1, 20_000, "a rotation after the restart");
  const reconnected = agent.lines.length;

  // Every certificate the agent could have presented on that connection has expired 4 s later;
  // keep going for three lifetimes.
  await sleep(VALIDITY_MS);
  const expired = agent.lines.length;
  await sleep(2 * VALIDITY_MS);
  const failures = agent.lines.slice(reconnected).filter((l) => l.event === "certificate.request_failed");
  assert.deepEqual(
    failures.map((l) => `${l.status}: ${l.error}`),
    [],
    "no renewal refused after the reconnect",
  );
  const renewed = rotated(expired).length;
  assert.ok(renewed >= 2, `renewed ${renewed} times after the first certificate expired`);
  // The server authenticated those renewals with the service certificates, not the bootstrap one.
  const issued = server.lines.filter((l) => l.event === "certificate.issued");
  assert.ok(issued.length >= 4, `${issued.length} issued by the restarted server`);
  assert.ok(
    issued.slice(1).every((l) => l.authn === "service-cert"),
    JSON.stringify(issued.map((l) => l.authn)),
  );
});
