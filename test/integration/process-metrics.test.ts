// The standard process and runtime metrics (issue 10, Deliver 5) on the three real processes:
// server, agent and webhook, scraped over their admin endpoints and read by a strict parser of the
// exposition format. Counters and gauges whose label sets are known report 0 before anything
// happened rather than being absent.

import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { makeIdentity } from "../../common/identity.js";
import { bootstrapCert, openTestCa, tempDir } from "../helpers/pki.js";
import { type CliProcess, startBootstrapAgent, startCli, startServerProcess } from "../helpers/processes.js";
import { type Family, parseExposition, sampleValue, scrape } from "../helpers/prometheus.js";

function checkProcessMetrics(families: Map<string, Family>, pid: number): void {
  const now = Date.now() / 1000;
  const user = sampleValue(families, "process_cpu_user_seconds_total");
  const system = sampleValue(families, "process_cpu_system_seconds_total");
  const total = sampleValue(families, "process_cpu_seconds_total");
  assert.ok(user > 0 && system >= 0, "CPU was spent starting up");
  assert.ok(Math.abs(total - (user + system)) < 0.05, "total is user + system");
  for (const name of [
    "process_cpu_user_seconds_total",
    "process_cpu_system_seconds_total",
    "process_cpu_seconds_total",
  ]) {
    assert.equal(families.get(name)?.type, "counter", name);
  }
  const rss = sampleValue(families, "process_resident_memory_bytes");
  assert.ok(rss > 20 * 1048576 && rss < 1024 * 1048576, `RSS ${rss}`);
  const open = sampleValue(families, "process_open_fds");
  const max = sampleValue(families, "process_max_fds");
  assert.ok(open >= 3 && open < max, `open fds ${open} of ${max}`);
  const start = sampleValue(families, "process_start_time_seconds");
  assert.ok(start <= now && start > now - 300, `start time ${start} (pid ${pid})`);
  const heapUsed = sampleValue(families, "nodejs_heap_size_used_bytes");
  const heapTotal = sampleValue(families, "nodejs_heap_size_total_bytes");
  assert.ok(heapUsed > 0 && heapUsed <= heapTotal, `heap ${heapUsed} of ${heapTotal}`);
  for (const quantile of ["0.5", "0.99"]) {
    const lag = sampleValue(families, "nodejs_eventloop_lag_seconds", { quantile });
    assert.ok(lag >= 0 && lag < 5, `loop lag p${quantile}: ${lag}`);
  }
  assert.equal(families.get("nodejs_gc_duration_seconds")?.type, "histogram");
  for (const kind of ["minor", "major", "incremental", "weakcb"]) {
    assert.ok(
      sampleValue(families, "nodejs_gc_duration_seconds", { kind }, "nodejs_gc_duration_seconds_count") >= 0,
    );
  }
}

describe("process and runtime metrics on every process", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: CliProcess;
  let serverAdmin: string;
  let agent: CliProcess;
  let agentAdmin: string;
  let webhook: CliProcess;
  let webhookAdmin: string;

  before(async () => {
    dir = await tempDir();
    const caDir = join(dir.path, "ca");
    const ca = await openTestCa(caDir);
    let address: string;
    ({ server, address, admin: serverAdmin } = await startServerProcess(caDir));
    const boot = await bootstrapCert(ca, makeIdentity("bookstore-v2", "bookstore"));
    await writeFile(join(dir.path, "tls.crt"), boot.certPem);
    await writeFile(join(dir.path, "tls.key"), boot.keyPem);
    await writeFile(join(dir.path, "ca.crt"), ca.trustBundle().roots.join(""));
    agent = startBootstrapAgent({
      server: address,
      bootstrapDir: dir.path,
      namespace: "bookstore",
      serviceAccount: "bookstore-v2",
      socket: join(dir.path, "sds.sock"),
    });
    webhook = startCli("webhook", [
      "webhook",
      "--ca-dir",
      caDir,
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
      "--agent-image",
      "openservicemesh/osm-cert:0.1.0",
    ]);
    agentAdmin = (await agent.waitForEvent("agent.started")).admin as string;
    webhookAdmin = (await webhook.waitForEvent("webhook.started")).admin as string;
  });

  after(async () => {
    await Promise.all([agent?.stop(), webhook?.stop()]);
    await server?.stop();
    await dir?.remove();
  });

  test("server: process_* and nodejs_* metrics, and zeros for counters nothing has touched", async () => {
    const families = await scrape(serverAdmin);
    checkProcessMetrics(families, server.child.pid as number);
    assert.equal(
      sampleValue(families, "osm_cert_server_requests_refused_total", { reason: "receive_timeout" }),
      0,
    );
    assert.equal(
      sampleValue(families, "osm_cert_server_requests_refused_total", { reason: "too_many_receiving" }),
      0,
    );
    assert.ok(
      sampleValue(families, "osm_cert_server_issuance_total", { provider: "tresor", code: "OK" }) >= 1,
    );
  });

  test("agent: process_* and nodejs_* metrics, and zeros for counters nothing has touched", async () => {
    const families = await scrape(agentAdmin);
    checkProcessMetrics(families, agent.child.pid as number);
    assert.equal(sampleValue(families, "osm_cert_agent_sds_nacks_total"), 0);
    assert.equal(sampleValue(families, "osm_cert_agent_sds_pushes_total"), 0);
    assert.equal(sampleValue(families, "osm_cert_agent_sds_streams"), 0);
    assert.equal(sampleValue(families, "osm_cert_agent_rotations_total", { result: "failure" }), 0);
  });

  test("webhook: process_* and nodejs_* metrics, and zeros for counters nothing has touched", async () => {
    const families = await scrape(webhookAdmin);
    checkProcessMetrics(families, webhook.child.pid as number);
    for (const result of ["injected", "unchanged", "skipped", "refused", "bad_request"]) {
      assert.equal(sampleValue(families, "osm_cert_webhook_admissions_total", { result }), 0, result);
    }
    assert.equal(
      sampleValue(
        families,
        "osm_cert_webhook_admission_duration_seconds",
        {},
        "osm_cert_webhook_admission_duration_seconds_count",
      ),
      0,
    );
  });

  test("event-loop lag shows a stall between two scrapes", async () => {
    // The monitor in this process: a child cannot be made to stall on demand.
    const { MetricsRegistry } = await import("../../common/metrics.js");
    const { registerProcessMetrics } = await import("../../common/process-metrics.js");
    const registry = new MetricsRegistry();
    const running = registerProcessMetrics(registry);
    try {
      parseExposition(registry.render()); // resets the window
      // The monitor's first tick after a reset only sets its baseline: let it tick before stalling.
      await new Promise((resolve) => setTimeout(resolve, 60));
      const until = Date.now() + 300;
      while (Date.now() < until) {
        // a 300 ms stall, as a hung key generation would cause
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
      const families = parseExposition(registry.render());
      const p99 = sampleValue(families, "nodejs_eventloop_lag_seconds", { quantile: "0.99" });
      assert.ok(p99 >= 0.2, `p99 ${p99}`);
    } finally {
      running.stop();
    }
  });
});

test("the strict exposition parser refuses what Prometheus would", () => {
  assert.throws(() => parseExposition("x 1\n"), /outside its family/);
  assert.throws(() => parseExposition('# HELP x X.\n# TYPE x gauge\nx{a="1"} one\n'), /value/);
  assert.throws(
    () => parseExposition("# HELP x X.\n# TYPE x gauge\n# HELP x X.\n# TYPE x gauge\n"),
    /declared twice/,
  );
  assert.throws(() => parseExposition("# HELP x X.\n# TYPE x gauge\nx 1\nx 2\n"), /series twice/);
  assert.throws(
    () =>
      parseExposition(
        '# HELP h H.\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      ),
    /cumulative/,
  );
});
