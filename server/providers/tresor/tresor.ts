// Tresor: OSM's built-in CA. The root lives in a store (a local directory here; the osm-ca-bundle
// Secret in Kubernetes); leaves are built and signed in-process on the hot path, with everything
// that does not vary per request computed once when the CA is loaded. During a root rotation
// (issue 9) the store's rotation state names the bundle (old + new) and the signing root; a
// following provider re-reads it on every change and switches both together.

import { createHash } from "node:crypto";
import { encodePem } from "../../../common/pem.js";
import {
  buildCertificate,
  type CertificateSigner,
  certificateSubjectDer,
  encodeName,
  keyIdentifier,
  randomSerialNumber,
  signerFor,
} from "../../../common/x509/certificate.js";
import { leafExtensions } from "../profiles.js";
import type {
  CertificateProvider,
  IssuedCertificate,
  IssueRequest,
  RenewOrder,
  TrustBundle,
} from "../provider.js";
import {
  type CaMaterial,
  CLOCK_SKEW_ALLOWANCE_MS,
  generateRoot,
  type LoadedCa,
  loadCa,
  type RootOptions,
} from "./ca-material.js";
import { fingerprintOf, type RotationState } from "./rotation-state.js";
import type { RotationStore } from "./rotation-store.js";

/** Where Tresor keeps its root. Implementations: DirectoryCaStore (and the Kubernetes Secret store). */
export interface CaStore {
  describe(): string;
  load(): Promise<CaMaterial | null>;
  createIfAbsent(material: CaMaterial): Promise<CaMaterial>;
  /** Root rotation state and roots, for stores that support rotation. */
  readonly rotation?: RotationStore;
}

export { CLOCK_SKEW_ALLOWANCE_MS };

/** A following provider re-reads the rotation state at least this often, whatever the watcher says. */
export const ROTATION_POLL_MS = 10_000;

export type RotationEvent =
  | {
      readonly kind: "switched";
      readonly phase: string;
      readonly bundleVersion: string;
      readonly signing: string;
      readonly roots: number;
    }
  | { readonly kind: "unreadable"; readonly error: string };

export interface TresorOptions {
  readonly store: CaStore;
  readonly root: RootOptions;
  /** Told when a new root was generated, or an existing one loaded. */
  readonly onRoot?: (event: { created: boolean; where: string; expiration: Date }) => void;
  /** Follow the store's rotation state while running (the server); one-shot users leave it off. */
  readonly follow?: boolean;
  /** Told about every switch of roots while following, and about states that could not be used. */
  readonly onRotation?: (event: RotationEvent) => void;
  readonly pollIntervalMs?: number;
}

/** Everything the hot path needs from the signing root, computed once per root. */
interface SigningRoot {
  readonly ca: LoadedCa;
  readonly fingerprint: string;
  readonly issuerName: Buffer;
  readonly authorityKeyId: Buffer;
  readonly signer: CertificateSigner;
  readonly notAfterMs: number;
}

/** The provider's whole view, replaced in one assignment so signing root and bundle never disagree. */
interface RootView {
  readonly signing: SigningRoot;
  readonly bundle: TrustBundle;
  readonly renew: RenewOrder | null;
  readonly phase: string | null;
}

function signingRoot(ca: LoadedCa): SigningRoot {
  return {
    ca,
    fingerprint: fingerprintOf(ca.certificate),
    issuerName: certificateSubjectDer(ca.certificateDer),
    authorityKeyId: keyIdentifier(ca.certificate.publicKey.export({ type: "spki", format: "der" })),
    signer: signerFor(ca.privateKey),
    notAfterMs: Date.parse(ca.certificate.validTo),
  };
}

function bundleOf(roots: readonly LoadedCa[]): TrustBundle {
  const hash = createHash("sha256");
  for (const root of roots) hash.update(root.certificateDer);
  // One root: the hash of its DER, as before rotation existed, so versions stay comparable.
  return { roots: roots.map((r) => r.certificatePem), version: hash.digest("hex").slice(0, 16) };
}

/** Loads every root the state names and checks each against its recorded fingerprint. */
export async function resolveRotationState(store: RotationStore, state: RotationState): Promise<RootView> {
  const loaded = new Map<string, LoadedCa>();
  for (const id of state.bundle) {
    const record = state.roots.find((r) => r.id === id);
    const ca = loadCa(await store.readRoot(id), `${store.describe()}/roots/${id}`);
    if (record === undefined || fingerprintOf(ca.certificate) !== record.fingerprint) {
      throw new Error(
        `${store.describe()}/roots/${id}: the root does not match the fingerprint in the rotation state`,
      );
    }
    loaded.set(id, ca);
  }
  const signing = loaded.get(state.signing) as LoadedCa;
  return {
    signing: signingRoot(signing),
    bundle: bundleOf(state.bundle.map((id) => loaded.get(id) as LoadedCa)),
    renew:
      state.renew === null ? null : { before: new Date(state.renew.before), windowMs: state.renew.windowMs },
    phase: state.phase,
  };
}

export class TresorProvider implements CertificateProvider {
  readonly name = "tresor" as const;
  private view: RootView;
  private readonly bundleListeners = new Set<(bundle: TrustBundle) => void>();
  private readonly signingListeners = new Set<() => void>();
  private stopFollowing: (() => void) | undefined;
  private reloading: Promise<void> | null = null;
  private reloadAgain = false;

  private constructor(
    view: RootView,
    private readonly options: TresorOptions,
  ) {
    this.view = view;
  }

  /** The root that signs new leaves now. */
  get ca(): LoadedCa {
    return this.view.signing.ca;
  }

  /** Loads the stored root, or creates one when the store is empty. Inconsistent material throws. */
  static async open(options: TresorOptions): Promise<TresorProvider> {
    const where = options.store.describe();
    const rotation = options.store.rotation;
    const state = rotation === undefined ? null : await rotation.readState();
    let view: RootView;
    if (rotation !== undefined && state !== null) {
      view = await resolveRotationState(rotation, state);
      options.onRoot?.({ created: false, where, expiration: new Date(view.signing.ca.certificate.validTo) });
    } else {
      let material = await options.store.load();
      let created = false;
      if (material === null) {
        const fresh = await generateRoot(options.root);
        material = await options.store.createIfAbsent(fresh);
        created = material === fresh;
      }
      const ca = loadCa(material, where);
      options.onRoot?.({ created, where, expiration: new Date(ca.certificate.validTo) });
      view = { signing: signingRoot(ca), bundle: bundleOf([ca]), renew: null, phase: null };
    }
    const provider = new TresorProvider(view, options);
    if (options.follow === true && rotation !== undefined) provider.follow(rotation);
    return provider;
  }

  async issue(request: IssueRequest): Promise<IssuedCertificate> {
    return this.issueSync(request);
  }

  /** The synchronous core of issue(): no awaits on the hot path. */
  issueSync(request: IssueRequest): IssuedCertificate {
    const root = this.view.signing;
    const now = Date.now();
    const notBefore = new Date(now - CLOCK_SKEW_ALLOWANCE_MS);
    // Never outlive the root: a leaf valid past its issuer's expiry would fail verification anyway.
    const notAfter = new Date(Math.min(now + request.validityMs, root.notAfterMs));
    const serial = randomSerialNumber();
    const spki = request.csr.publicKey.spki;
    const der = buildCertificate(
      {
        serialNumber: serial,
        issuer: root.issuerName,
        subject: encodeName({ commonName: request.commonName }),
        spki,
        notBefore,
        notAfter,
        extensions: leafExtensions(
          request.profile,
          { dns: request.dnsNames, uris: request.uris, ips: request.ipAddresses },
          keyIdentifier(spki),
          root.authorityKeyId,
        ),
      },
      root.signer,
    );
    return {
      chainPem: [encodePem("CERTIFICATE", der)],
      serialNumber: serial
        .toString("hex")
        .toUpperCase()
        .replace(/^(00)+(?=.)/, ""),
      // Certificates hold whole seconds; report what the certificate says.
      notBefore: new Date(Math.floor(notBefore.getTime() / 1000) * 1000),
      notAfter: new Date(Math.floor(notAfter.getTime() / 1000) * 1000),
    };
  }

  trustBundle(): TrustBundle {
    return this.view.bundle;
  }

  renewOrder(): RenewOrder | null {
    return this.view.renew;
  }

  /** SHA-256 of the signing root and the rotation phase (null outside a rotation). */
  rotationStatus(): { signingFingerprint: string; phase: string | null } {
    return { signingFingerprint: this.view.signing.fingerprint, phase: this.view.phase };
  }

  onTrustBundleChange(listener: (bundle: TrustBundle) => void): () => void {
    this.bundleListeners.add(listener);
    return () => this.bundleListeners.delete(listener);
  }

  onSigningRootChange(listener: () => void): () => void {
    this.signingListeners.add(listener);
    return () => this.signingListeners.delete(listener);
  }

  /** Re-reads the rotation state now (also what the watcher and the poll call). */
  reload(): Promise<void> {
    const rotation = this.options.store.rotation;
    if (rotation === undefined) return Promise.resolve();
    if (this.reloading !== null) {
      this.reloadAgain = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      do {
        this.reloadAgain = false;
        await this.reloadOnce(rotation);
      } while (this.reloadAgain);
    })().finally(() => {
      this.reloading = null;
    });
    return this.reloading;
  }

  private async reloadOnce(rotation: RotationStore): Promise<void> {
    let next: RootView;
    try {
      const state = await rotation.readState();
      if (state === null) return;
      next = await resolveRotationState(rotation, state);
    } catch (error) {
      // A bad state never replaces good roots: keep signing and trusting what we have.
      this.options.onRotation?.({ kind: "unreadable", error: (error as Error).message });
      return;
    }
    const previous = this.view;
    const signingChanged = next.signing.fingerprint !== previous.signing.fingerprint;
    const bundleChanged = next.bundle.version !== previous.bundle.version;
    const renewChanged = next.renew?.before.getTime() !== previous.renew?.before.getTime();
    if (!signingChanged && !bundleChanged && !renewChanged && next.phase === previous.phase) return;
    this.view = next;
    this.options.onRotation?.({
      kind: "switched",
      phase: next.phase ?? "none",
      bundleVersion: next.bundle.version,
      signing: next.signing.fingerprint,
      roots: next.bundle.roots.length,
    });
    if (signingChanged) for (const listener of this.signingListeners) listener();
    // A renew order travels with the bundle message, so it is announced like a bundle change.
    if (bundleChanged || renewChanged) for (const listener of this.bundleListeners) listener(next.bundle);
  }

  private follow(rotation: RotationStore): void {
    const stopWatch = rotation.watch(() => void this.reload());
    // The watcher can miss events (network filesystems, a directory replaced wholesale): poll too.
    const poll = setInterval(() => void this.reload(), this.options.pollIntervalMs ?? ROTATION_POLL_MS);
    poll.unref();
    this.stopFollowing = () => {
      stopWatch();
      clearInterval(poll);
    };
  }

  async close(): Promise<void> {
    this.stopFollowing?.();
    await this.reloading;
  }
}
