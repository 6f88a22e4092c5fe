// Root rotation state (issue 9): which roots exist, which of them the mesh trusts (the bundle) and
// which one signs, plus the phase and its timestamps. Stores keep it next to the root (rotation.json
// in the CA directory; later a Secret in Kubernetes mode) and only move text; everything read back is
// validated here, so a corrupt state stops with one clear message and is never "repaired" silently.

import { createHash, type X509Certificate } from "node:crypto";

/**
 * published: the bundle holds old + new, the old root still signs (phase 1 done).
 * agents-confirmed: every reporting agent serves that bundle (phase 2 done).
 * signing-new: the new root signs and agents were told to renew (phase 3 done).
 * complete: the old root left the bundle (phase 4 done).
 * rolled-back: back to the old root alone, before phase 3.
 */
export const ROTATION_PHASES = [
  "published",
  "agents-confirmed",
  "signing-new",
  "complete",
  "rolled-back",
] as const;
export type RotationPhase = (typeof ROTATION_PHASES)[number];

export interface RootRecord {
  /** First 16 hex digits of the fingerprint; names the root's subdirectory (roots/<id>). */
  readonly id: string;
  /** SHA-256 of the root certificate's DER, lower-case hex. */
  readonly fingerprint: string;
  readonly notAfter: string;
  readonly role: "old" | "new";
}

/** Agents whose certificate was obtained before `before` renew within a random delay in `windowMs`. */
export interface RenewOrder {
  readonly before: string;
  readonly windowMs: number;
}

export interface RotationState {
  readonly version: 1;
  readonly phase: RotationPhase;
  readonly roots: readonly RootRecord[];
  /** Ids of the roots every workload trusts, in order. */
  readonly bundle: readonly string[];
  /** Id of the root that signs new leaves; always in the bundle. */
  readonly signing: string;
  readonly renew: RenewOrder | null;
  /** ISO times at which each phase was reached (started = when phase 1 began). */
  readonly timestamps: Readonly<Partial<Record<RotationPhase | "started", string>>>;
  /** Phase 4 drops the old root at this time (set when phase 3 is reached). */
  readonly dropOldAfter: string | null;
}

export class RotationStateError extends Error {
  readonly code = "ERR_OSM_CERT_ROTATION_STATE";
}

export function fingerprintOf(cert: X509Certificate): string {
  return createHash("sha256").update(cert.raw).digest("hex");
}

export function rootIdOf(fingerprint: string): string {
  return fingerprint.slice(0, 16);
}

const ID = /^[0-9a-f]{16}$/;
const FINGERPRINT = /^[0-9a-f]{64}$/;

/** Parses and cross-checks a stored state; `where` names the store in every message. */
export function parseRotationState(text: string, where: string): RotationState {
  const fail = (why: string): never => {
    throw new RotationStateError(
      `${where}: rotation state is unusable (${why}); nothing was changed. Fix or restore it, ` +
        "or run `osm-cert rotate-root --status` to see what it should hold.",
    );
  };
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    return fail(`not JSON: ${(error as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return fail("not a JSON object");
  const o = raw as Record<string, unknown>;
  if (o.version !== 1) return fail(`unknown version ${JSON.stringify(o.version)}`);
  const phase = o.phase;
  if (typeof phase !== "string" || !(ROTATION_PHASES as readonly string[]).includes(phase))
    return fail(`unknown phase ${JSON.stringify(phase)}`);
  if (!Array.isArray(o.roots) || o.roots.length === 0 || o.roots.length > 8)
    return fail("roots must list 1 to 8 roots");
  const roots: RootRecord[] = o.roots.map((r: unknown, i): RootRecord => {
    if (typeof r !== "object" || r === null) return fail(`roots[${i}] is not an object`);
    const x = r as Record<string, unknown>;
    if (typeof x.fingerprint !== "string" || !FINGERPRINT.test(x.fingerprint))
      return fail(`roots[${i}].fingerprint is not a SHA-256 hex digest`);
    if (x.id !== rootIdOf(x.fingerprint)) return fail(`roots[${i}].id does not match its fingerprint`);
    if (typeof x.notAfter !== "string" || Number.isNaN(Date.parse(x.notAfter)))
      return fail(`roots[${i}].notAfter is not a time`);
    if (x.role !== "old" && x.role !== "new") return fail(`roots[${i}].role must be "old" or "new"`);
    return { id: x.id, fingerprint: x.fingerprint, notAfter: x.notAfter, role: x.role };
  });
  const ids = new Set(roots.map((r) => r.id));
  if (ids.size !== roots.length) return fail("a root is listed twice");
  if (!Array.isArray(o.bundle) || o.bundle.length === 0) return fail("bundle must name at least one root");
  const bundle = o.bundle.map((id: unknown) => {
    if (typeof id !== "string" || !ID.test(id) || !ids.has(id))
      return fail(`bundle names unknown root ${JSON.stringify(id)}`);
    return id;
  });
  if (typeof o.signing !== "string" || !bundle.includes(o.signing))
    return fail("the signing root must be one of the bundle's roots");
  let renew: RenewOrder | null = null;
  if (o.renew !== null && o.renew !== undefined) {
    const r = o.renew as Record<string, unknown>;
    if (typeof r.before !== "string" || Number.isNaN(Date.parse(r.before)))
      return fail("renew.before is not a time");
    if (typeof r.windowMs !== "number" || !Number.isFinite(r.windowMs) || r.windowMs < 0)
      return fail("renew.windowMs is not a duration");
    renew = { before: r.before, windowMs: r.windowMs };
  }
  const timestamps: Partial<Record<RotationPhase | "started", string>> = {};
  if (typeof o.timestamps !== "object" || o.timestamps === null) return fail("timestamps missing");
  for (const [key, value] of Object.entries(o.timestamps as Record<string, unknown>)) {
    if (key !== "started" && !(ROTATION_PHASES as readonly string[]).includes(key))
      return fail(`unknown timestamp ${key}`);
    if (typeof value !== "string" || Number.isNaN(Date.parse(value)))
      return fail(`timestamps.${key} is not a time`);
    timestamps[key as RotationPhase | "started"] = value;
  }
  const dropOldAfter = o.dropOldAfter ?? null;
  if (dropOldAfter !== null && (typeof dropOldAfter !== "string" || Number.isNaN(Date.parse(dropOldAfter))))
    return fail("dropOldAfter is not a time");
  const state: RotationState = {
    version: 1,
    phase: phase as RotationPhase,
    roots,
    bundle,
    signing: o.signing,
    renew,
    timestamps,
    dropOldAfter: dropOldAfter as string | null,
  };
  const consistency = phaseInconsistency(state);
  if (consistency !== null) fail(consistency);
  return state;
}

/** What each phase promises about the bundle and the signing root; null when the state keeps it. */
function phaseInconsistency(state: RotationState): string | null {
  const role = (id: string) => state.roots.find((r) => r.id === id)?.role;
  const bundleRoles = state.bundle.map(role).sort().join("+");
  switch (state.phase) {
    case "published":
    case "agents-confirmed":
      if (bundleRoles !== "new+old" || role(state.signing) !== "old")
        return `phase ${state.phase} needs a bundle of old + new signed by the old root`;
      return null;
    case "signing-new":
      if (bundleRoles !== "new+old" || role(state.signing) !== "new")
        return "phase signing-new needs a bundle of old + new signed by the new root";
      if (state.dropOldAfter === null) return "phase signing-new needs dropOldAfter";
      return null;
    case "complete":
      if (bundleRoles !== "new" || role(state.signing) !== "new")
        return "phase complete needs the new root alone";
      return null;
    case "rolled-back":
      if (bundleRoles !== "old" || role(state.signing) !== "old")
        return "phase rolled-back needs the old root alone";
      return null;
  }
}

export function serializeRotationState(state: RotationState): string {
  return `${JSON.stringify(state, null, 2)}\n`;
}
