// The root rotation procedure (issue 9, DESIGN.md §11 `osm-cert rotate-root`), as a sequence of
// phases over a store's rotation state. Each phase ends with one atomic state write, so a run that
// is interrupted anywhere resumes from the last phase written; a phase already done is never done
// again. Servers follow the state (TresorProvider follow mode) and switch bundle and signing root
// together; this module never talks to agents itself, it asks a probe what the servers see.

import { setTimeout as sleep } from "node:timers/promises";
import { formatDuration } from "../../common/duration.js";
import {
  type CaMaterial,
  generateRoot,
  type LoadedCa,
  loadCa,
  type RootOptions,
} from "../providers/tresor/ca-material.js";
import {
  fingerprintOf,
  type RootRecord,
  type RotationPhase,
  type RotationState,
  rootIdOf,
} from "../providers/tresor/rotation-state.js";
import type { RotationStore } from "../providers/tresor/rotation-store.js";
import { resolveRotationState } from "../providers/tresor/tresor.js";

export class RotationError extends Error {
  readonly code = "ERR_OSM_CERT_ROTATION";
}

/** What the servers see, asked for by phases 2 and 3 (their admin /status in directory mode). */
export interface ServerProbe {
  /** Whether every server serves `version` and every agent reports it; otherwise who does not. */
  agentsOn(version: string): Promise<{ done: boolean; summary: string; stragglers: readonly string[] }>;
  /** Whether every server signs with the root of this SHA-256. */
  signingWith(fingerprint: string): Promise<{ done: boolean; summary: string }>;
  /** The longest service-cert validity any server may issue (its --service-cert-validity-duration). */
  maxServiceCertValidityMs(): Promise<number | null>;
}

export interface RotationOptions {
  /** The store's plain root (ca.crt, private.key, expiration), read when no rotation state exists. */
  readonly loadPlainRoot: () => Promise<CaMaterial | null>;
  readonly rotation: RotationStore;
  /** The operator's own new root; a fresh one is generated with `rootOptions` otherwise. */
  readonly newRoot: CaMaterial | null;
  readonly rootOptions: RootOptions;
  /** Null: no server to ask (phase 2 then waits `waitAgentsMs` blindly). */
  readonly probe: ServerProbe | null;
  readonly waitAgentsMs: number;
  readonly renewWindowMs: number;
  readonly maxServiceCertValidityMs: number;
  readonly clockSkewMs: number;
  /** How long a server may take to notice a new state (its poll interval). */
  readonly followLagMs: number;
  /** Start another rotation after a finished (or rolled back) one. */
  readonly again: boolean;
  readonly say: (line: string) => void;
  readonly signal?: AbortSignal;
  readonly now?: () => number;
}

const TERMINAL: readonly RotationPhase[] = ["complete", "rolled-back"];
const PROBE_INTERVAL_MS = 500;

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function recordOf(ca: LoadedCa, role: "old" | "new"): RootRecord {
  const fingerprint = fingerprintOf(ca.certificate);
  return {
    id: rootIdOf(fingerprint),
    fingerprint,
    notAfter: new Date(ca.certificate.validTo).toISOString(),
    role,
  };
}

function rootOf(state: RotationState, role: "old" | "new"): RootRecord {
  return state.roots.find((r) => r.role === role) as RootRecord;
}

/** Drives the rotation from wherever the stored state stands to the end; returns the final state. */
export async function rotateRoot(options: RotationOptions): Promise<RotationState> {
  const { rotation, say } = options;
  const now = options.now ?? Date.now;
  let state = await rotation.readState();
  if (state !== null && TERMINAL.includes(state.phase)) {
    if (state.phase === "complete") await promoteIfNeeded(options, state);
    if (!options.again) {
      say(
        `rotation already ${state.phase} (${state.timestamps[state.phase]}); nothing to do. Pass --again to rotate once more.`,
      );
      return state;
    }
  }
  if (state === null || TERMINAL.includes(state.phase)) state = await phase1(options, state);
  else say(`resuming the rotation at phase ${state.phase} (started ${state.timestamps.started})`);

  if (state.phase === "published") {
    const version = (await resolveRotationState(rotation, state)).bundle.version;
    await waitForAgents(options, version);
    state = {
      ...state,
      phase: "agents-confirmed",
      timestamps: { ...state.timestamps, "agents-confirmed": iso(now()) },
    };
    await rotation.writeState(state);
    say(`phase 2/4 done: agents serve bundle ${version} (old + new)`);
  }

  if (state.phase === "agents-confirmed") {
    const at = now();
    let maxValidity = options.maxServiceCertValidityMs;
    const reported = await options.probe?.maxServiceCertValidityMs();
    if (reported !== undefined && reported !== null && reported > maxValidity) maxValidity = reported;
    // Old-root leaves are issued until every server has switched; each may live maxValidity, and
    // peers with clocks behind accept it a little longer.
    const dropOldAfter = at + options.followLagMs + maxValidity + options.clockSkewMs;
    const next = rootOf(state, "new");
    state = {
      ...state,
      phase: "signing-new",
      signing: next.id,
      renew: { before: iso(at), windowMs: options.renewWindowMs },
      timestamps: { ...state.timestamps, "signing-new": iso(at) },
      dropOldAfter: iso(dropOldAfter),
    };
    await rotation.writeState(state);
    say(
      `phase 3/4 done: the new root ${next.fingerprint.slice(0, 16)} signs; agents renew within ${formatDuration(options.renewWindowMs)}; ` +
        `the old root leaves the bundle after ${iso(dropOldAfter)}`,
    );
    if (options.probe !== null) await waitUntilSigning(options, next.fingerprint);
  }

  if (state.phase === "signing-new") {
    const dropAt = Date.parse(state.dropOldAfter as string);
    const left = dropAt - now();
    if (left > 0) {
      say(
        `phase 4/4: waiting ${formatDuration(Math.ceil(left / 1000) * 1000)} (until ${iso(dropAt)}) until no leaf of the old root can be valid; safe to interrupt and rerun`,
      );
      await sleep(left, undefined, { signal: options.signal });
    }
    const kept = rootOf(state, "new");
    state = {
      ...state,
      phase: "complete",
      bundle: [kept.id],
      signing: kept.id,
      timestamps: { ...state.timestamps, complete: iso(now()) },
    };
    await rotation.writeState(state);
    await promoteIfNeeded(options, state);
    say(
      `phase 4/4 done: the old root ${rootOf(state, "old").fingerprint.slice(0, 16)} left the bundle; rotation complete`,
    );
  }
  return state;
}

async function phase1(options: RotationOptions, previous: RotationState | null): Promise<RotationState> {
  const { rotation, say } = options;
  const now = options.now ?? Date.now;
  let oldMaterial: CaMaterial | null;
  if (previous === null) oldMaterial = await options.loadPlainRoot();
  else oldMaterial = await rotation.readRoot(previous.signing);
  if (oldMaterial === null) {
    throw new RotationError(
      `${rotation.describe()} holds no root yet: start the server (or osm-cert issue) first`,
    );
  }
  const oldCa = loadCa(oldMaterial, rotation.describe());
  const newMaterial = options.newRoot ?? (await generateRoot(options.rootOptions));
  const newCa = loadCa(
    newMaterial,
    options.newRoot === null ? "the generated root" : "--new-root-cert/--new-root-key",
  );
  const oldRecord = recordOf(oldCa, "old");
  const newRecord = recordOf(newCa, "new");
  if (oldRecord.fingerprint === newRecord.fingerprint) {
    throw new RotationError("the new root is the current root; bring a different one");
  }
  // Both roots under roots/<id>/ before the state names them: a reader never finds a missing root.
  await rotation.writeRoot(oldRecord.id, oldMaterial);
  await rotation.writeRoot(newRecord.id, newMaterial);
  const at = iso(now());
  const state: RotationState = {
    version: 1,
    phase: "published",
    roots: [oldRecord, newRecord],
    bundle: [oldRecord.id, newRecord.id],
    signing: oldRecord.id,
    renew: null,
    timestamps: { started: at, published: at },
    dropOldAfter: null,
  };
  await rotation.writeState(state);
  say(
    `phase 1/4 done: ${options.newRoot === null ? "generated" : "took"} new root ${newRecord.fingerprint.slice(0, 16)} (expires ${newRecord.notAfter}); ` +
      `bundle = old ${oldRecord.fingerprint.slice(0, 16)} + new; the old root still signs`,
  );
  return state;
}

async function waitForAgents(options: RotationOptions, version: string): Promise<void> {
  const { probe, say } = options;
  const now = options.now ?? Date.now;
  if (probe === null) {
    say(
      `phase 2/4: no --server to ask; waiting --wait-agents ${formatDuration(options.waitAgentsMs)} for agents to follow the bundle`,
    );
    await sleep(options.waitAgentsMs, undefined, { signal: options.signal });
    return;
  }
  say(
    `phase 2/4: waiting up to ${formatDuration(options.waitAgentsMs)} until every agent serves bundle ${version}`,
  );
  const deadline = now() + options.waitAgentsMs;
  let last = "";
  for (;;) {
    const seen = await probe.agentsOn(version);
    if (seen.done) {
      say(`phase 2/4: ${seen.summary}`);
      return;
    }
    if (seen.summary !== last) say(`phase 2/4: ${seen.summary}`);
    last = seen.summary;
    if (now() >= deadline) {
      throw new RotationError(
        `agents did not all follow bundle ${version} within ${formatDuration(options.waitAgentsMs)}; ` +
          `stragglers: ${seen.stragglers.join(", ") || "none listed"}. The rotation stays at phase 1 (published): ` +
          "rerun to wait again, or roll back with --rollback",
      );
    }
    await sleep(PROBE_INTERVAL_MS, undefined, { signal: options.signal });
  }
}

async function waitUntilSigning(options: RotationOptions, fingerprint: string): Promise<void> {
  const probe = options.probe as ServerProbe;
  const now = options.now ?? Date.now;
  const deadline = now() + options.followLagMs * 2;
  for (;;) {
    const seen = await probe.signingWith(fingerprint);
    if (seen.done) {
      options.say(`phase 3/4: ${seen.summary}`);
      return;
    }
    if (now() >= deadline) {
      options.say(
        `phase 3/4: warning: ${seen.summary} (the wait before phase 4 already allows for slow followers)`,
      );
      return;
    }
    await sleep(PROBE_INTERVAL_MS, undefined, { signal: options.signal });
  }
}

/** Rolls back to the old root alone; only before the new root signed anything. */
export async function rollbackRotation(
  options: Pick<RotationOptions, "rotation" | "say" | "now">,
): Promise<RotationState> {
  const { rotation, say } = options;
  const now = options.now ?? Date.now;
  const state = await rotation.readState();
  if (state === null) throw new RotationError(`${rotation.describe()}: no rotation to roll back`);
  if (state.phase === "rolled-back") {
    say("rotation already rolled back; nothing to do");
    return state;
  }
  if (state.phase !== "published" && state.phase !== "agents-confirmed") {
    throw new RotationError(
      `the rotation is at phase ${state.phase}: the new root already signed certificates, so rolling back ` +
        "would break them. Finish the rotation (rerun without --rollback), then rotate again if needed.",
    );
  }
  const old = rootOf(state, "old");
  const next: RotationState = {
    ...state,
    phase: "rolled-back",
    bundle: [old.id],
    signing: old.id,
    renew: null,
    timestamps: { ...state.timestamps, "rolled-back": iso(now()) },
  };
  await rotation.writeState(next);
  say(`rolled back: bundle = old root ${old.fingerprint.slice(0, 16)} alone; it signs as before`);
  return next;
}

/** After completion the plain files name the new root too, for readers without rotation support. */
async function promoteIfNeeded(options: RotationOptions, state: RotationState): Promise<void> {
  const signing = await options.rotation.readRoot(state.signing);
  const plain = await options.loadPlainRoot();
  // All three files compared: a run killed between two renames finishes the promotion next time.
  const same =
    plain !== null &&
    plain.caCert === signing.caCert &&
    plain.privateKey === signing.privateKey &&
    plain.expiration === signing.expiration;
  if (!same) await options.rotation.promote(signing);
}
