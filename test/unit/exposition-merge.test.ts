// /metrics of a server with --workers (server/exposition-merge.ts): the expositions of the primary
// and the workers merged into one that a strict parser of the text format accepts, each family once,
// every sample labelled with its process, histograms and label-less samples included.

import assert from "node:assert/strict";
import { test } from "node:test";
import { LATENCY_BUCKETS_SECONDS, MetricsRegistry } from "../../common/metrics.js";
import { mergeExpositions } from "../../server/exposition-merge.js";
import { parseExposition, sampleValue } from "../helpers/prometheus.js";

function worker(issued: number): string {
  const metrics = new MetricsRegistry();
  metrics
    .counter("osm_cert_server_issuance_total", "CreateCertificate calls.")
    .inc({ provider: "tresor", code: "OK" }, issued);
  metrics
    .histogram("osm_cert_server_issuance_duration_seconds", "Latency.", LATENCY_BUCKETS_SECONDS)
    .observe(0.01, {
      provider: "tresor",
      code: "OK",
    });
  metrics.gauge("process_resident_memory_bytes", "RSS.").set(1_000 * issued);
  return metrics.render();
}

test("the primary's and two workers' metrics merge into one valid exposition", () => {
  const primary = new MetricsRegistry();
  primary.gauge("osm_cert_server_workers", "Workers.").set(2);
  primary.gauge("process_resident_memory_bytes", "RSS.").set(5);
  const text = mergeExpositions([
    { worker: "primary", text: primary.render() },
    { worker: "1", text: worker(3) },
    { worker: "2", text: worker(4) },
  ]);
  const families = parseExposition(text);
  assert.equal(text.match(/^# TYPE process_resident_memory_bytes /gm)?.length, 1, "one TYPE per family");
  assert.equal(sampleValue(families, "process_resident_memory_bytes", { worker: "primary" }), 5);
  assert.equal(sampleValue(families, "process_resident_memory_bytes", { worker: "2" }), 4_000);
  assert.equal(
    sampleValue(families, "osm_cert_server_issuance_total", { worker: "1", provider: "tresor", code: "OK" }),
    3,
  );
  assert.equal(
    sampleValue(
      families,
      "osm_cert_server_issuance_duration_seconds",
      { worker: "2", provider: "tresor", code: "OK" },
      "osm_cert_server_issuance_duration_seconds_count",
    ),
    1,
  );
  assert.equal(sampleValue(families, "osm_cert_server_workers", { worker: "primary" }), 2);
});
