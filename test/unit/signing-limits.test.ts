// SigningLimits (server/signing-limits.ts) on a clock the test moves: the in-flight cap and its
// release, the retry hint that spreads refused demand over recent throughput, the per-identity
// bucket (burst, refill, exact hint, off at rate 0), and the zero-initialised metrics.

import assert from "node:assert/strict";
import { test } from "node:test";
import { MetricsRegistry } from "../../common/metrics.js";
import { type LimitRefusal, SigningLimits } from "../../server/signing-limits.js";

function limits(options: { maxInFlight?: number; rate?: number; burst?: number } = {}) {
  let now = 1_000_000;
  const metrics = new MetricsRegistry();
  const subject = new SigningLimits({
    maxInFlight: options.maxInFlight ?? 2,
    perIdentityRate: options.rate ?? 10,
    perIdentityBurst: options.burst ?? 3,
    metrics,
    now: () => now,
  });
  return { subject, metrics, advance: (ms: number) => (now += ms) };
}

const isRefusal = (value: unknown): value is LimitRefusal =>
  typeof value === "object" && value !== null && "retryAfterMs" in value;

test("metrics exist at zero before anything happens", () => {
  const { metrics } = limits();
  const text = metrics.render();
  assert.match(text, /osm_cert_server_signings_in_flight 0/);
  assert.match(text, /osm_cert_server_signing_refused_total\{reason="in_flight"\} 0/);
  assert.match(text, /osm_cert_server_signing_refused_total\{reason="identity_rate"\} 0/);
});

test("the in-flight cap refuses past the limit until a slot is released (once)", () => {
  const { subject, metrics } = limits({ maxInFlight: 2 });
  const a = subject.enter();
  const b = subject.enter();
  assert.equal(typeof a, "function");
  assert.equal(typeof b, "function");
  const refused = subject.enter();
  assert.ok(isRefusal(refused));
  assert.equal(refused.reason, "in_flight");
  assert.match(refused.message, /signing 2 requests already \(its limit\); retry in \d+ ms/);
  (a as () => void)();
  (a as () => void)();
  assert.equal(subject.inFlightCount, 1, "a second release of the same slot changes nothing");
  assert.equal(typeof subject.enter(), "function");
  assert.match(metrics.render(), /osm_cert_server_signing_refused_total\{reason="in_flight"\} 1/);
});

test("the hint spreads the refused demand over the recent throughput, within 250 ms and 30 s", () => {
  const { subject, advance } = limits({ maxInFlight: 10 });
  // One second completing 10 signings (the floor is the cap a second anyway).
  for (let i = 0; i < 10; i++) (subject.enter() as () => void)();
  advance(1_000);
  const held = Array.from({ length: 10 }, () => subject.enter());
  assert.ok(held.every((h) => typeof h === "function"));
  const hints: number[] = [];
  for (let i = 0; i < 200; i++) {
    const r = subject.enter();
    assert.ok(isRefusal(r));
    hints.push(r.retryAfterMs);
  }
  assert.equal(hints[0], 250, "the first refusals are asked for the minimum");
  // 200 refused at 10 a second: the last is asked to wait about 20 s.
  assert.ok((hints.at(-1) as number) >= 19_000 && (hints.at(-1) as number) <= 20_000, String(hints.at(-1)));
  for (let i = 0; i < 5_000; i++) subject.enter();
  const capped = subject.enter();
  assert.ok(isRefusal(capped));
  assert.equal(capped.retryAfterMs, 30_000);
});

test("per identity: a burst, then the rate; the hint is when the next token arrives; others unaffected", () => {
  const { subject, advance, metrics } = limits({ rate: 2, burst: 3 });
  for (let i = 0; i < 3; i++) assert.equal(subject.charge("loop.storm"), null);
  const refused = subject.charge("loop.storm");
  assert.ok(refused !== null);
  assert.equal(refused.reason, "identity_rate");
  assert.equal(refused.retryAfterMs, 500);
  assert.equal(subject.charge("calm.storm"), null);
  advance(499);
  assert.notEqual(subject.charge("loop.storm"), null, "not before the hint");
  advance(501);
  assert.equal(subject.charge("loop.storm"), null, "after it");
  assert.match(metrics.render(), /osm_cert_server_signing_refused_total\{reason="identity_rate"\} 2/);
});

test("a pod renewing at half of even a one-minute certificate never meets the default limit", () => {
  const { subject, advance } = limits({ rate: 10, burst: 100 });
  for (let i = 0; i < 1_000; i++) {
    assert.equal(subject.charge("bookstore-v2.bookstore"), null);
    advance(30_000);
  }
});

test("rate 0 turns the per-identity limit off", () => {
  const { subject } = limits({ rate: 0, burst: 1 });
  for (let i = 0; i < 1_000; i++) assert.equal(subject.charge("loop.storm"), null);
});
