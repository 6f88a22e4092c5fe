// Tresor: OSM's built-in CA. The root lives in a store (a local directory here; the osm-ca-bundle
// Secret in Kubernetes); leaves are built and signed in-process on the hot path, with everything
// that does not vary per request computed once when the CA is loaded.

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
import type { CertificateProvider, IssuedCertificate, IssueRequest, TrustBundle } from "../provider.js";
import { type CaMaterial, generateRoot, type LoadedCa, loadCa, type RootOptions } from "./ca-material.js";

/** Where Tresor keeps its root. Implementations: DirectoryCaStore (and the Kubernetes Secret store). */
export interface CaStore {
  describe(): string;
  load(): Promise<CaMaterial | null>;
  createIfAbsent(material: CaMaterial): Promise<CaMaterial>;
}

/** Leaves start this long before "now", so peers whose clocks lag a little still accept them. */
export const CLOCK_SKEW_ALLOWANCE_MS = 30_000;

export interface TresorOptions {
  readonly store: CaStore;
  readonly root: RootOptions;
  /** Told when a new root was generated, or an existing one loaded. */
  readonly onRoot?: (event: { created: boolean; where: string; expiration: Date }) => void;
}

export class TresorProvider implements CertificateProvider {
  readonly name = "tresor" as const;
  private readonly issuerName: Buffer;
  private readonly authorityKeyId: Buffer;
  private readonly signer: CertificateSigner;
  private readonly bundle: TrustBundle;

  private constructor(readonly ca: LoadedCa) {
    this.issuerName = certificateSubjectDer(ca.certificateDer);
    this.authorityKeyId = keyIdentifier(ca.certificate.publicKey.export({ type: "spki", format: "der" }));
    this.signer = signerFor(ca.privateKey);
    this.bundle = {
      roots: [ca.certificatePem],
      version: createHash("sha256").update(ca.certificateDer).digest("hex").slice(0, 16),
    };
  }

  /** Loads the stored root, or creates one when the store is empty. Inconsistent material throws. */
  static async open(options: TresorOptions): Promise<TresorProvider> {
    const where = options.store.describe();
    let material = await options.store.load();
    let created = false;
    if (material === null) {
      const fresh = await generateRoot(options.root);
      material = await options.store.createIfAbsent(fresh);
      created = material === fresh;
    }
    const ca = loadCa(material, where);
    options.onRoot?.({ created, where, expiration: new Date(ca.certificate.validTo) });
    return new TresorProvider(ca);
  }

  async issue(request: IssueRequest): Promise<IssuedCertificate> {
    return this.issueSync(request);
  }

  /** The synchronous core of issue(): no awaits on the hot path. */
  issueSync(request: IssueRequest): IssuedCertificate {
    const now = Date.now();
    const notBefore = new Date(now - CLOCK_SKEW_ALLOWANCE_MS);
    // Never outlive the root: a leaf valid past its issuer's expiry would fail verification anyway.
    const rootNotAfter = Date.parse(this.ca.certificate.validTo);
    const notAfter = new Date(Math.min(now + request.validityMs, rootNotAfter));
    const serial = randomSerialNumber();
    const spki = request.csr.publicKey.spki;
    const der = buildCertificate(
      {
        serialNumber: serial,
        issuer: this.issuerName,
        subject: encodeName({ commonName: request.commonName }),
        spki,
        notBefore,
        notAfter,
        extensions: leafExtensions(
          request.profile,
          { dns: request.dnsNames, uris: request.uris, ips: request.ipAddresses },
          keyIdentifier(spki),
          this.authorityKeyId,
        ),
      },
      this.signer,
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
    return this.bundle;
  }

  // The Tresor root changes only through root rotation, which arrives with its own issue; until
  // then the bundle is fixed for the life of the process and there is nothing to announce.
  onTrustBundleChange(_listener: (bundle: TrustBundle) => void): () => void {
    return () => {};
  }

  async close(): Promise<void> {}
}
