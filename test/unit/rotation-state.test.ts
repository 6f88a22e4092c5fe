// The root rotation state read from the CA directory (issue 9): every phase's promise about bundle
// and signing root is checked, and anything else is refused with a message that names the problem.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  parseRotationState,
  type RotationState,
  RotationStateError,
  serializeRotationState,
} from "../../server/providers/tresor/rotation-state.js";

const OLD = "a".repeat(64);
const NEW = "b".repeat(64);
const good: RotationState = {
  version: 1,
  phase: "signing-new",
  roots: [
    { id: OLD.slice(0, 16), fingerprint: OLD, notAfter: "2036-01-01T00:00:00.000Z", role: "old" },
    { id: NEW.slice(0, 16), fingerprint: NEW, notAfter: "2036-06-01T00:00:00.000Z", role: "new" },
  ],
  bundle: [OLD.slice(0, 16), NEW.slice(0, 16)],
  signing: NEW.slice(0, 16),
  renew: { before: "2026-11-30T18:00:00.000Z", windowMs: 300_000 },
  timestamps: { started: "2026-11-30T17:59:00.000Z", "signing-new": "2026-11-30T18:00:00.000Z" },
  dropOldAfter: "2026-12-01T18:00:40.000Z",
};

test("a written state reads back unchanged", () => {
  assert.deepEqual(parseRotationState(serializeRotationState(good), "dir"), good);
});

test("corrupt or inconsistent states are refused with a reason", () => {
  const cases: [string, RegExp][] = [
    ["{", /not JSON/],
    ["[]", /not a JSON object/],
    [JSON.stringify({ ...good, version: 2 }), /unknown version 2/],
    [JSON.stringify({ ...good, phase: "sideways" }), /unknown phase "sideways"/],
    [JSON.stringify({ ...good, signing: "0".repeat(16) }), /signing root must be one of the bundle's roots/],
    [
      JSON.stringify({ ...good, bundle: [NEW.slice(0, 16)] }),
      /needs a bundle of old \+ new signed by the new root/,
    ],
    [JSON.stringify({ ...good, phase: "published" }), /needs a bundle of old \+ new signed by the old root/],
    [JSON.stringify({ ...good, dropOldAfter: null }), /needs dropOldAfter/],
    [
      JSON.stringify({ ...good, roots: [{ ...good.roots[0], id: "0".repeat(16) }, good.roots[1]] }),
      /id does not match/,
    ],
    [JSON.stringify({ ...good, renew: { before: "soon", windowMs: 1 } }), /renew.before is not a time/],
    [JSON.stringify({ ...good, bundle: ["../../etc"] }), /bundle names unknown root/],
  ];
  for (const [text, pattern] of cases) {
    assert.throws(
      () => parseRotationState(text, "CA directory /x/rotation.json"),
      (error: unknown) =>
        error instanceof RotationStateError &&
        pattern.test(error.message) &&
        error.message.startsWith("CA directory /x/rotation.json: rotation state is unusable"),
      text,
    );
  }
});
