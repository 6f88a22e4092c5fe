// The agent's client for the signing API: one gRPC+TLS channel to the server, trusting the mesh
// roots and presenting whatever client certificate the rotator last installed.

import { randomUUID } from "node:crypto";
import type { PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { quote } from "../common/quote.js";
import type { MutableCertificateProvider } from "../common/tls-material.js";
import { readCertificateNames } from "../common/x509/certificate-names.js";
import {
  type CreateCertificateRequest,
  type CreateCertificateResponse,
  certificateServiceDefinition,
  msToDuration,
  type ReportTrustBundleRequest,
  type TrustBundleMessage,
  type WatchTrustBundleRequest,
} from "../proto/signing-api.js";

export class SignerError extends Error {
  readonly code = "ERR_OSM_CERT_SIGNER";
  constructor(
    /** gRPC status name, e.g. UNAVAILABLE. */
    readonly status: string,
    message: string,
  ) {
    super(message);
  }
  /** Whether trying again later can help; a refusal (bad CSR, wrong identity) will not change by itself. */
  get retryable(): boolean {
    return this.status !== "INVALID_ARGUMENT" && this.status !== "PERMISSION_DENIED";
  }
}

export interface SignerClientOptions {
  /** HOST:PORT of the signing server. */
  readonly target: string;
  readonly tls: MutableCertificateProvider;
  /** Present a client certificate (bootstrap, then the current service cert) on the TLS handshake. */
  readonly clientCertificate: boolean;
  /** A bearer token sent with every call (projected ServiceAccount token), when set. */
  readonly token?: () => string;
  /**
   * The SPIFFE ID the server's certificate must carry (signingServerSpiffeId). It replaces the
   * hostname check: a workload's certificate can be valid for a DNS name, never for this ID.
   */
  readonly serverSpiffeId: string;
}

type GenericClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export class SignerClient {
  private client: GenericClient;
  private readonly connect: () => GenericClient;
  /** Random per process: ties this agent's bundle reports to its watch stream on the server. */
  readonly agentId = randomUUID();

  constructor(options: SignerClientOptions) {
    const Constructor = grpc.makeGenericClientConstructor(
      certificateServiceDefinition(),
      "CertificateService",
    );
    let credentials: grpc.ChannelCredentials = grpc.experimental.createCertificateProviderChannelCredentials(
      options.tls,
      options.clientCertificate ? options.tls : null,
      { checkServerIdentity: serverIdentityCheck(options.serverSpiffeId) },
    );
    const token = options.token;
    if (token !== undefined) {
      credentials = credentials.compose(
        grpc.credentials.createFromMetadataGenerator((_params, callback) => {
          const metadata = new grpc.Metadata();
          metadata.set("authorization", `Bearer ${token()}`);
          callback(null, metadata);
        }),
      );
    }
    this.connect = () =>
      new Constructor(options.target, credentials, {
        "grpc.keepalive_time_ms": 60_000,
        // Reconnect quickly after a server restart; the rotator adds its own backoff on top.
        "grpc.initial_reconnect_backoff_ms": 500,
        "grpc.max_reconnect_backoff_ms": 10_000,
        // A connection of our own, never one shared with an earlier channel (see renewConnection).
        "grpc.use_local_subchannel_pool": 1,
      }) as GenericClient;
    this.client = this.connect();
  }

  /**
   * Calls from now on go over a new connection. A TLS connection keeps the client certificate of
   * its handshake: without this, renewals after a reconnect kept presenting the service certificate
   * the connection was opened with and were refused once it expired ("client certificate expired"),
   * until the connection happened to drop. Calls in flight (the trust bundle watch) finish on the
   * old connection, which closes when they end.
   */
  renewConnection(): void {
    const old = this.client;
    this.client = this.connect();
    old.close();
  }

  createCertificate(
    csrPem: string,
    validityMs: number,
    timeoutMs: number,
  ): Promise<CreateCertificateResponse> {
    const request: CreateCertificateRequest = { csr: csrPem, validity: msToDuration(validityMs) };
    return new Promise((resolve, reject) => {
      const call = this.client.CreateCertificate as (
        req: CreateCertificateRequest,
        options: grpc.CallOptions,
        cb: (error: grpc.ServiceError | null, response?: CreateCertificateResponse) => void,
      ) => void;
      call.call(this.client, request, { deadline: Date.now() + timeoutMs }, (error, response) => {
        if (error) reject(toSignerError(error));
        else resolve(response as CreateCertificateResponse);
      });
    });
  }

  /** Follows the trust bundle until cancelled; `onEnd` is told when the stream ends for any reason. */
  watchTrustBundle(
    onBundle: (bundle: TrustBundleMessage) => void,
    onEnd: (error: SignerError) => void,
  ): () => void {
    const watch = this.client.WatchTrustBundle as (
      req: WatchTrustBundleRequest,
    ) => grpc.ClientReadableStream<TrustBundleMessage>;
    const stream = watch.call(this.client, { agent_id: this.agentId });
    let ended = false;
    const end = (error: SignerError) => {
      if (ended) return;
      ended = true;
      onEnd(error);
    };
    stream.on("data", onBundle);
    stream.on("error", (error: grpc.ServiceError) => end(toSignerError(error)));
    stream.on("end", () => end(new SignerError("UNAVAILABLE", "trust bundle stream ended by the server")));
    return () => {
      ended = true;
      stream.cancel();
    };
  }

  /** Tells the server which bundle version this agent now serves (root rotation, phase 2). */
  reportTrustBundle(version: string, timeoutMs = 10_000): Promise<void> {
    const request: ReportTrustBundleRequest = { agent_id: this.agentId, version };
    return new Promise((resolve, reject) => {
      const call = this.client.ReportTrustBundle as (
        req: ReportTrustBundleRequest,
        options: grpc.CallOptions,
        cb: (error: grpc.ServiceError | null) => void,
      ) => void;
      call.call(this.client, request, { deadline: Date.now() + timeoutMs }, (error) => {
        if (error) reject(toSignerError(error));
        else resolve();
      });
    });
  }

  close(): void {
    this.client.close();
  }
}

/**
 * Runs after TLS verified the server's chain against the roots the agent holds: the leaf must name
 * exactly the signing server's SPIFFE ID, read structurally from its DER.
 */
export function serverIdentityCheck(
  expected: string,
): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => {
    let uris: readonly string[];
    try {
      uris = readCertificateNames(cert.raw).san.uris;
    } catch (error) {
      return new Error(`signing server certificate is unreadable: ${(error as Error).message}`);
    }
    if (uris.length === 1 && uris[0] === expected) return undefined;
    return Object.assign(
      new Error(
        `signing server certificate does not carry the signing server's identity ${expected} ` +
          `(URI SANs: ${uris.length === 0 ? "none" : uris.map((u) => quote(u)).join(", ")}); refusing to trust it`,
      ),
      { code: "ERR_OSM_CERT_SERVER_IDENTITY" },
    );
  };
}

function toSignerError(error: grpc.ServiceError): SignerError {
  const status = grpc.status[error.code] ?? "UNKNOWN";
  return new SignerError(status, error.details || error.message);
}
