import assert from "node:assert/strict";
import { test } from "node:test";
import { DurationError, formatDuration, parseDuration } from "../../common/duration.js";

test("parses Go durations as OSM's flags write them", () => {
  assert.equal(parseDuration("24h"), 86_400_000);
  assert.equal(parseDuration("30m"), 1_800_000);
  assert.equal(parseDuration("1.5h"), 5_400_000);
  assert.equal(parseDuration("1h30m"), 5_400_000);
  assert.equal(parseDuration("87600h"), 87_600 * 3_600_000);
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("1m0.5s"), 60_500);
  assert.equal(parseDuration("0"), 0);
  assert.equal(parseDuration(".5s"), 500);
});

test("refuses what Go refuses, naming the input", () => {
  for (const bad of ["abc", "", "10", "1d", "h", "1h-5m", "-1h", "1 h", "1hh"]) {
    assert.throws(
      () => parseDuration(bad),
      (e: unknown) => e instanceof DurationError && e.message.includes(`"${bad}"`),
      bad,
    );
  }
});

test("formats like time.Duration.String()", () => {
  assert.equal(formatDuration(5_400_000), "1h30m0s");
  assert.equal(formatDuration(1_500), "1.5s");
  assert.equal(formatDuration(0), "0s");
  assert.equal(formatDuration(250), "250ms");
  assert.equal(parseDuration(formatDuration(86_400_000)), 86_400_000);
});
