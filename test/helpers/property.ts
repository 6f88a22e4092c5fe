// Shared set-up of the property suites (issue 10, Deliver 2): how many cases to run, a
// process-level check that no promise is ever rejected unhandled, and the heap figure the soak-sized
// run reports (heapUsed after a forced GC).

import assert from "node:assert/strict";
import { after, before } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** OSM_CERT_PROPERTY_RUNS=10000 gives the soak-sized run; `npm test` uses each suite's small default. */
export function propertyRuns(defaultRuns: number): number {
  const fromEnv = Number(process.env.OSM_CERT_PROPERTY_RUNS);
  return Number.isInteger(fromEnv) && fromEnv > 0 ? fromEnv : defaultRuns;
}

/** True in the soak-sized run, where memory figures are worth printing. */
export const SOAK = process.env.OSM_CERT_PROPERTY_RUNS !== undefined;

/**
 * Fails the suite if any promise is rejected with nobody listening, anywhere in this process
 * (our code, grpc-js, fast-check) while its properties run.
 */
export function forbidUnhandledRejections(): void {
  const seen: unknown[] = [];
  const onRejection = (reason: unknown) => seen.push(reason);
  before(() => {
    process.on("unhandledRejection", onRejection);
  });
  after(() => {
    process.off("unhandledRejection", onRejection);
    assert.deepEqual(seen, [], "unhandled promise rejections");
  });
}

let gc: (() => void) | undefined;

/** heapUsed of this process after a full GC, in MB. */
export function heapUsedMb(): number {
  if (gc === undefined) {
    setFlagsFromString("--expose-gc");
    gc = runInNewContext("gc") as () => void;
  }
  gc();
  gc();
  return Math.round((process.memoryUsage().heapUsed / 1048576) * 10) / 10;
}

/** OSM_CERT_PROPERTY_SEED replays a failure that fast-check reported with its seed. */
export function propertySeed(): { seed?: number } {
  const seed = Number(process.env.OSM_CERT_PROPERTY_SEED);
  return Number.isInteger(seed) ? { seed } : {};
}
