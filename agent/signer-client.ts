// The agent's client for the signing API: a gRPC+TLS channel to the server, trusting the mesh
// roots and presenting the client certificate the rotator last installed.
//
// A TLS connection presents the certificate of its handshake for its whole life, so a channel
// opened with a short-lived service certificate would keep presenting it after it expired (every
// renewal then UNAUTHENTICATED although a newer one is held). Each installed identity therefore gets
// a channel of its own (useCurrentIdentity): new calls go over it, the trust-bundle stream moves to
// it once the new stream has delivered (no gap), and the old channel is closed without waiting: calls
// still running on it finish, and a dead server costs nothing (close() never blocks).

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
    /** The server's grpc-retry-pushback-ms on a refusal: do not ask again before this long. */
    readonly retryAfterMs: number | null = null,
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
  /**
   * Told each time an old channel is let go (useCurrentIdentity), so that its connection's native
   * memory can be collected soon (native-memory.ts).
   */
  readonly onChannelReleased?: () => void;
}

type GenericClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/** One WatchTrustBundle subscription; its stream can move between channels. */
interface Watch {
  readonly onBundle: (bundle: TrustBundleMessage) => void;
  readonly onEnd: (error: SignerError) => void;
  stream: grpc.ClientReadableStream<TrustBundleMessage>;
  /** A stream on a newer channel, until its first message makes it `stream`. */
  replacement: grpc.ClientReadableStream<TrustBundleMessage> | null;
  ended: boolean;
}

export class SignerClient {
  /** The channel of the identity installed last: every new call goes over it. */
  private client: GenericClient;
  private readonly make: () => GenericClient;
  private readonly onChannelReleased: () => void;
  private readonly watches = new Set<Watch>();
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
    this.make = () =>
      new Constructor(options.target, credentials, {
        "grpc.keepalive_time_ms": 60_000,
        // Reconnect quickly after a server restart; the rotator adds its own backoff on top.
        "grpc.initial_reconnect_backoff_ms": 500,
        "grpc.max_reconnect_backoff_ms": 10_000,
        // A connection of its own: the global pool would hand a new channel with the same
        // credentials the old connection, with the old certificate.
        "grpc.use_local_subchannel_pool": 1,
      }) as GenericClient;
    this.client = this.make();
    this.onChannelReleased = options.onChannelReleased ?? (() => {});
  }

  /** Starts connecting now rather than on the first call (the handshake overlaps local work). */
  connect(): void {
    this.client.getChannel().getConnectivityState(true);
  }

  /**
   * The client identity changed (TLS material already updated): later calls go over a new
   * connection that presents it; open trust-bundle streams follow; the old channel is closed.
   */
  useCurrentIdentity(): void {
    const old = this.client;
    this.client = this.make();
    for (const watch of this.watches) this.moveWatch(watch);
    // Calls in flight on the old channel continue (grpc-js); new ones cannot start there. Nothing
    // here waits for the old connection, so a dead server cannot hold the agent.
    old.close();
    this.onChannelReleased();
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
    const watch: Watch = {
      onBundle,
      onEnd,
      stream: this.openWatch(),
      replacement: null,
      ended: false,
    };
    this.follow(watch, watch.stream);
    this.watches.add(watch);
    return () => {
      this.endWatch(watch);
      watch.stream.cancel();
      watch.replacement?.cancel();
    };
  }

  private openWatch(): grpc.ClientReadableStream<TrustBundleMessage> {
    const watch = this.client.WatchTrustBundle as (
      req: WatchTrustBundleRequest,
    ) => grpc.ClientReadableStream<TrustBundleMessage>;
    return watch.call(this.client, { agent_id: this.agentId });
  }

  /** Events of `stream` count while it is the watch's stream; a replaced stream is silent. */
  private follow(watch: Watch, stream: grpc.ClientReadableStream<TrustBundleMessage>): void {
    stream.on("data", (bundle: TrustBundleMessage) => {
      if (watch.ended) return;
      if (stream === watch.replacement) {
        // The new channel delivers: from now on it is the stream; the old one is let go.
        const old = watch.stream;
        watch.stream = stream;
        watch.replacement = null;
        old.cancel();
      }
      if (stream === watch.stream) watch.onBundle(bundle);
    });
    const ended = (error: SignerError) => {
      if (stream === watch.replacement) {
        // The move failed; the old stream is still good. The next identity change tries again.
        watch.replacement = null;
        return;
      }
      if (stream !== watch.stream || watch.ended) return;
      if (watch.replacement !== null) {
        // The old stream ended first: the replacement, once it delivers, carries on alone.
        watch.stream = watch.replacement;
        watch.replacement = null;
        return;
      }
      this.endWatch(watch);
      watch.onEnd(error);
    };
    stream.on("error", (error: grpc.ServiceError) => ended(toSignerError(error)));
    stream.on("end", () => ended(new SignerError("UNAVAILABLE", "trust bundle stream ended by the server")));
  }

  private moveWatch(watch: Watch): void {
    if (watch.ended) return;
    watch.replacement?.cancel();
    const stream = this.openWatch();
    watch.replacement = stream;
    this.follow(watch, stream);
  }

  private endWatch(watch: Watch): void {
    watch.ended = true;
    this.watches.delete(watch);
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
    for (const watch of [...this.watches]) {
      this.endWatch(watch);
      watch.stream.cancel();
      watch.replacement?.cancel();
    }
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
  return new SignerError(status, error.details || error.message, retryPushbackMs(error.metadata));
}

/** Longest pushback honoured: a hint beyond it is a broken or hostile server, not a plan. */
const MAX_PUSHBACK_MS = 5 * 60_000;

/** gRPC's grpc-retry-pushback-ms (a non-negative whole number of milliseconds), or null. */
export function retryPushbackMs(metadata: grpc.Metadata | undefined): number | null {
  const value = metadata?.get("grpc-retry-pushback-ms")[0];
  if (typeof value !== "string" || !/^\d{1,10}$/.test(value)) return null;
  return Math.min(Number(value), MAX_PUSHBACK_MS);
}
