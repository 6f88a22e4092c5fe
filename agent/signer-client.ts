// The agent's client for the signing API: one gRPC+TLS channel to the server, trusting the mesh
// roots and presenting whatever client certificate the rotator last installed.

import * as grpc from "@grpc/grpc-js";
import type { MutableCertificateProvider } from "../common/tls-material.js";
import {
  type CreateCertificateRequest,
  type CreateCertificateResponse,
  certificateServiceDefinition,
  msToDuration,
  type TrustBundleMessage,
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
}

type GenericClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export class SignerClient {
  private readonly client: GenericClient;

  constructor(options: SignerClientOptions) {
    const Constructor = grpc.makeGenericClientConstructor(
      certificateServiceDefinition(),
      "CertificateService",
    );
    let credentials: grpc.ChannelCredentials = grpc.experimental.createCertificateProviderChannelCredentials(
      options.tls,
      options.clientCertificate ? options.tls : null,
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
    this.client = new Constructor(options.target, credentials, {
      "grpc.keepalive_time_ms": 60_000,
      // Reconnect quickly after a server restart; the rotator adds its own backoff on top.
      "grpc.initial_reconnect_backoff_ms": 500,
      "grpc.max_reconnect_backoff_ms": 10_000,
    }) as GenericClient;
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
      req: object,
    ) => grpc.ClientReadableStream<TrustBundleMessage>;
    const stream = watch.call(this.client, {});
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

  close(): void {
    this.client.close();
  }
}

function toSignerError(error: grpc.ServiceError): SignerError {
  const status = grpc.status[error.code] ?? "UNKNOWN";
  return new SignerError(status, error.details || error.message);
}
