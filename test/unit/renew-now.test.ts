// Renew-now (issue 9), the agent's side: 1,000 agents told at once renew at random moments spread
// over the window (the signer sees no stampede), each order is honoured once, and an agent whose
// certificate is already newer than the order does not renew.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Rotator } from "../../agent/rotator.js";
import type { CreateCertificateResponse } from "../../proto/signing-api.js";
import { captureLog } from "../helpers/log-capture.js";
import { openTestCa, tempDir } from "../helpers/pki.js";
import { testRotator } from "../helpers/rotator.js";
import { bookstoreLeafResponse } from "../helpers/signing-client.js";

const AGENTS = 1_000;
const WINDOW_MS = 2_000;

const dir = await tempDir();
after(() => dir.remove());

test("1,000 agents told to renew at once spread their requests over the window, once each", async () => {
  const ca = await openTestCa(join(dir.path, "ca"));
  const calls: number[] = [];
  let counting = false;
  const signer = {
    async createCertificate(csrPem: string, validityMs: number): Promise<CreateCertificateResponse> {
      if (counting) calls.push(Date.now());
      return bookstoreLeafResponse(ca, csrPem, validityMs);
    },
  };
  const rotators: Rotator[] = [];
  const log = captureLog();
  for (let i = 0; i < AGENTS + 1; i++) {
    const { rotator } = testRotator({ roots: ca.trustBundle().roots.join(""), signer, logger: log.logger });
    rotators.push(rotator);
    if (i < AGENTS) await rotator.rotateNow();
  }
  await sleep(5);
  const before = new Date();
  // The last agent obtains its certificate after the order was made: it must not renew.
  const late = rotators[AGENTS] as Rotator;
  await late.rotateNow();
  counting = true;
  const told = Date.now();
  try {
    for (const rotator of rotators) rotator.requestRenewal(before, WINDOW_MS);
    // The same order again (every bundle message repeats it) changes nothing.
    for (const rotator of rotators) rotator.requestRenewal(before, WINDOW_MS);
    const deadline = Date.now() + WINDOW_MS + 10_000;
    while (calls.length < AGENTS && Date.now() < deadline) await sleep(100);
    await sleep(500);
    assert.equal(calls.length, AGENTS, "each agent renewed exactly once; the late one not at all");
    // The delays the agents chose: spread over the window, roughly a fifth of them in every fifth.
    const delays = log.lines
      .filter((l) => l.event === "certificate.renew_requested")
      .map((l) => l.renewInMs as number);
    assert.equal(delays.length, AGENTS);
    const buckets = [0, 0, 0, 0, 0];
    for (const delay of delays) {
      assert.ok(delay >= 0 && delay < WINDOW_MS, `delay ${delay} inside the window`);
      const i = Math.min(4, Math.floor((delay / WINDOW_MS) * 5));
      buckets[i] = (buckets[i] ?? 0) + 1;
    }
    for (const n of buckets) assert.ok(n >= 120 && n <= 280, `per-fifth counts ${buckets.join(", ")}`);
    // And the signer saw them arrive over (at least) the window, not in one burst.
    const spanMs = Math.max(...calls) - Math.min(...calls);
    assert.ok(spanMs >= WINDOW_MS * 0.8, `requests spanned ${spanMs} ms`);
    assert.ok(Math.min(...calls) - told < WINDOW_MS / 5, "the first renewals start at once");
  } finally {
    for (const rotator of rotators) rotator.stop();
  }
});
