import assert from "node:assert/strict";
import { test } from "node:test";
import { MetricsRegistry } from "../../common/metrics.js";

test("renders the Prometheus text format with labels, escaping and histograms", () => {
  const registry = new MetricsRegistry();
  const issued = registry.counter("issued_total", "Issued.");
  issued.inc({ provider: "tresor", code: "OK" });
  issued.inc({ code: "OK", provider: "tresor" });
  issued.inc({ provider: 'we"ird\n', code: "X" });
  registry.gauge("streams", "Open streams.").set(3);
  const latency = registry.histogram("latency_seconds", "Latency.", [0.1, 1]);
  latency.observe(0.05);
  latency.observe(0.5);
  const text = registry.render();
  assert.match(text, /^# HELP issued_total Issued\.\n# TYPE issued_total counter\n/);
  assert.match(text, /^issued_total\{code="OK",provider="tresor"\} 2$/m);
  assert.match(text, /^issued_total\{code="X",provider="we\\"ird\\n"\} 1$/m);
  assert.match(text, /^streams 3$/m);
  assert.match(text, /^latency_seconds_bucket\{le="0.1"\} 1$/m);
  assert.match(text, /^latency_seconds_bucket\{le="1"\} 2$/m);
  assert.match(text, /^latency_seconds_bucket\{le="\+Inf"\} 2$/m);
  assert.match(text, /^latency_seconds_count 2$/m);
  assert.throws(() => registry.counter("streams", "again"), /registered twice/);
});

test("zero() shows a series before anything happened to it: 0 rather than absent", () => {
  const registry = new MetricsRegistry();
  registry.counter("pushes_total", "Pushes.").zero();
  const refused = registry.counter("refused_total", "Refused.").zero({ reason: "timeout" });
  registry.histogram("latency_seconds", "Latency.", [0.1]).zero();
  registry.gauge("silent", "Never touched.");
  refused.zero({ reason: "timeout" }); // idempotent
  refused.inc({ reason: "timeout" });
  refused.zero({ reason: "timeout" }); // keeps what was counted
  const text = registry.render();
  assert.match(text, /^pushes_total 0$/m);
  assert.match(text, /^refused_total\{reason="timeout"\} 1$/m);
  assert.match(text, /^latency_seconds_bucket\{le="0.1"\} 0$/m);
  assert.match(text, /^latency_seconds_bucket\{le="\+Inf"\} 0$/m);
  assert.match(text, /^latency_seconds_count 0$/m);
  assert.match(text, /^# TYPE silent gauge$/m);
});
