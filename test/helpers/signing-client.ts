// A raw client of our signing API for tests: any CSR, any client certificate (or none); and the
// answer a signing server gives bookstore-v2, for tests that stand in for the server.

import * as grpc from "@grpc/grpc-js";
import { makeIdentity } from "../../common/identity.js";
import { parseCsrPem } from "../../common/x509/csr.js";
import {
  type CreateCertificateResponse,
  certificateServiceDefinition,
  msToDuration,
  type TrustBundleMessage,
} from "../../proto/signing-api.js";
import type { TresorProvider } from "../../server/providers/tresor/tresor.js";
import type { KeyedCert } from "./pki.js";

type Untyped = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export class TestSigningClient {
  private readonly client: Untyped;

  /** `channelOptions` e.g. `{ "grpc.use_local_subchannel_pool": 1 }`: a connection of its own. */
  constructor(
    address: string,
    rootPem: string,
    clientCert?: KeyedCert,
    bearerToken?: string,
    channelOptions: grpc.ChannelOptions = {},
  ) {
    const Constructor = grpc.makeGenericClientConstructor(
      certificateServiceDefinition(),
      "CertificateService",
    );
    let credentials = grpc.credentials.createSsl(
      Buffer.from(rootPem),
      clientCert ? Buffer.from(clientCert.keyPem) : null,
      clientCert ? Buffer.from(clientCert.certPem) : null,
    );
    if (bearerToken !== undefined) {
      credentials = credentials.compose(
        grpc.credentials.createFromMetadataGenerator((_params, callback) => {
          const metadata = new grpc.Metadata();
          metadata.set("authorization", `Bearer ${bearerToken}`);
          callback(null, metadata);
        }),
      );
    }
    this.client = new Constructor(address, credentials, {
      "grpc.max_send_message_length": 1 << 20,
      ...channelOptions,
    }) as Untyped;
  }

  create(
    csr: string,
    validityMs = 0,
    bearerToken?: string,
    deadlineMs = 10_000,
  ): Promise<CreateCertificateResponse> {
    const metadata = new grpc.Metadata();
    // A per-call credential: many identities over one connection (the channel's own token, if any, is replaced).
    if (bearerToken !== undefined) metadata.set("authorization", `Bearer ${bearerToken}`);
    return new Promise((resolve, reject) => {
      (
        this.client.CreateCertificate as (
          r: object,
          m: grpc.Metadata,
          o: object,
          cb: (e: grpc.ServiceError | null, r?: CreateCertificateResponse) => void,
        ) => void
      ).call(
        this.client,
        { csr, validity: msToDuration(validityMs) },
        metadata,
        { deadline: Date.now() + deadlineMs },
        (error, response) => (error ? reject(error) : resolve(response as CreateCertificateResponse)),
      );
    });
  }

  /** The first trust bundle message of a WatchTrustBundle stream. */
  firstBundle(): Promise<TrustBundleMessage> {
    const stream = (
      this.client.WatchTrustBundle as (r: object) => grpc.ClientReadableStream<TrustBundleMessage>
    ).call(this.client, {});
    return new Promise((resolve, reject) => {
      stream.once("data", (bundle: TrustBundleMessage) => {
        stream.cancel();
        resolve(bundle);
      });
      stream.once("error", reject);
    });
  }

  /** Every trust bundle message of one WatchTrustBundle stream; return() cancels it. */
  async *watchBundles(): AsyncGenerator<TrustBundleMessage> {
    const stream = (
      this.client.WatchTrustBundle as (r: object) => grpc.ClientReadableStream<TrustBundleMessage>
    ).call(this.client, {});
    try {
      for await (const bundle of stream as AsyncIterable<TrustBundleMessage>) yield bundle;
    } finally {
      stream.cancel();
    }
  }

  close(): void {
    this.client.close();
  }
}

/** Resolves to the gRPC status name of a failed call, or "OK". */
export async function statusOf(call: Promise<unknown>): Promise<{ status: string; details: string }> {
  try {
    await call;
    return { status: "OK", details: "" };
  } catch (error) {
    const e = error as grpc.ServiceError;
    return { status: grpc.status[e.code] ?? String(e.code), details: e.details };
  }
}

/** The workload the unit tests sign for: ServiceAccount bookstore-v2 in namespace bookstore. */
export const BOOKSTORE_V2 = {
  identity: makeIdentity("bookstore-v2", "bookstore"),
  commonName: "bookstore-v2.bookstore.cluster.local",
  spiffeId: "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2",
} as const;

/**
 * A signing server's answer to bookstore-v2's CSR: a leaf from `ca` (any Tresor CA, a rogue one
 * too) and, when `bundle` is given, that bundle as the answer's trust bundle.
 */
export function bookstoreLeafResponse(
  ca: TresorProvider,
  csrPem: string,
  validityMs: number,
  bundle: readonly string[] | null = null,
): CreateCertificateResponse {
  const issued = ca.issueSync({
    csrPem,
    csr: parseCsrPem(csrPem),
    profile: "service",
    commonName: BOOKSTORE_V2.commonName,
    dnsNames: [BOOKSTORE_V2.commonName],
    uris: [BOOKSTORE_V2.spiffeId],
    ipAddresses: [],
    validityMs,
  });
  return {
    certificate_chain: [...issued.chainPem],
    trust_bundle:
      bundle === null
        ? null
        : { trust_domain: "cluster.local", root_certificates: [...bundle], version: "x" },
    serial_number: issued.serialNumber,
    not_before: null,
    not_after: null,
    validity_clamped: false,
  };
}
