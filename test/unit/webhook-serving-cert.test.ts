// The webhook's serving certificate renewer (issue 9, Deliver 4): by default it renews at two thirds
// of the lifetime (not before), and at once when told the signing root changed.

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type IssuedServingCertificate, ServingCertRenewer } from "../../webhook/serving-cert.js";
import { captureLog } from "../helpers/log-capture.js";

function certificate(lifetimeMs: number, serial: string): IssuedServingCertificate {
  const now = Date.now();
  return {
    certPem: "unused",
    keyPem: "unused",
    serialNumber: serial,
    notBefore: new Date(now),
    notAfter: new Date(now + lifetimeMs),
    issuedAt: new Date(now),
  };
}

test("renews at two thirds of the lifetime by default, and at once on renewNow()", async () => {
  const started = Date.now();
  const renewedAt: number[] = [];
  let n = 0;
  const renewer = new ServingCertRenewer({
    current: certificate(3_000, "first"),
    // Each new certificate lives an hour: only renewNow() can bring the next renewal forward.
    issue: async () => certificate(3_600_000, `renewed-${++n}`),
    onRenewed: () => renewedAt.push(Date.now() - started),
    logger: captureLog().logger,
  });
  const stop = new AbortController();
  const running = renewer.run(stop.signal);
  try {
    await sleep(1_800);
    assert.equal(renewedAt.length, 0, "not before two thirds of 3 s");
    const deadline = Date.now() + 10_000;
    while (renewedAt.length === 0 && Date.now() < deadline) await sleep(20);
    assert.equal(renewedAt.length, 1);
    const first = renewedAt.at(0) ?? -1;
    assert.ok(first >= 1_950, `renewed after ${first} ms`);
    // The signing root changed: renew now, not in 40 minutes.
    renewer.renewNow();
    const soon = Date.now() + 5_000;
    while (renewedAt.length === 1 && Date.now() < soon) await sleep(20);
    assert.equal(renewedAt.length, 2, "renewNow() renewed at once");
  } finally {
    stop.abort();
    await running;
  }
});
