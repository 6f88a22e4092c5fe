// Bounds what callers can hold on the signing port before they are authenticated (issue 11).
// grpc-js buffers a request until it is complete and only then runs a handler, so without this a
// peer without any credential could open streams, announce large messages, send all but a byte
// and keep the memory forever. Every call must deliver its whole request within a deadline. Calls
// on a connection whose client certificate TLS verified against the mesh roots are only held to
// that deadline (and grpc-js's 16 streams per connection); the others may be receiving at most
// `maxReceiving` at once across the process and `maxReceivingPerPeer` per peer address, so an
// attacker can neither hold unbounded memory nor crowd out agents: past a cap a new call is refused
// at once with RESOURCE_EXHAUSTED and a retry hint. A long-lived call (WatchTrustBundle) is no
// longer "receiving" once its request arrived, so it is not limited here.

import * as grpc from "@grpc/grpc-js";
import type { Gauge, MetricsRegistry } from "../common/metrics.js";
import { peerAddress } from "./authn.js";
import { hasVerifiedClientCertificate } from "./peer-connection.js";

export interface RequestGuardOptions {
  /** A call's request (message and half-close) must arrive within this. */
  readonly receiveTimeoutMs: number;
  /** Calls without a verified client certificate that may be receiving at once, in all. */
  readonly maxReceiving: number;
  /** The same, from one peer address (default: a sixteenth of maxReceiving, at least 16). */
  readonly maxReceivingPerPeer?: number;
  readonly metrics: MetricsRegistry;
}

export class RequestGuard {
  private receiving = 0;
  private readonly receivingByPeer = new Map<string, number>();
  private readonly maxPerPeer: number;
  private readonly gauge: Gauge;
  private readonly refused;

  constructor(private readonly options: RequestGuardOptions) {
    this.maxPerPeer = options.maxReceivingPerPeer ?? Math.max(16, Math.floor(options.maxReceiving / 16));
    this.gauge = options.metrics.gauge(
      "osm_cert_server_requests_receiving",
      "Calls without a verified client certificate whose request has not fully arrived yet.",
    );
    this.gauge.set(0);
    this.refused = options.metrics
      .counter(
        "osm_cert_server_requests_refused_total",
        "Calls ended by the request guard, by reason (receive_timeout, too_many_receiving).",
      )
      .zero({ reason: "too_many_receiving" })
      .zero({ reason: "receive_timeout" });
  }

  get receivingCount(): number {
    return this.receiving;
  }

  /** The grpc-js server interceptor that applies the guard to every call. */
  readonly interceptor: grpc.ServerInterceptor = (_method, call) => {
    let timer: NodeJS.Timeout | undefined;
    // Set while this call counts against the unauthenticated caps; the peer it counts for.
    let countedFor: string | undefined;
    const release = () => {
      clearTimeout(timer);
      timer = undefined;
      if (countedFor === undefined) return;
      this.uncount(countedFor);
      countedFor = undefined;
    };
    const intercepting: grpc.ServerInterceptingCall = new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        // grpc-js reports a peer certificate only when TLS verified it against the mesh roots.
        if (!hasVerifiedClientCertificate(call)) {
          const peer = peerAddress(call.getPeer());
          const full =
            this.receiving >= this.options.maxReceiving
              ? `the server is receiving ${this.receiving} requests already`
              : (this.receivingByPeer.get(peer) ?? 0) >= this.maxPerPeer
                ? `this address has ${this.maxPerPeer} requests arriving already`
                : null;
          if (full !== null) {
            this.refused.inc({ reason: "too_many_receiving" });
            next(new grpc.ServerListenerBuilder().build());
            intercepting.sendStatus({
              code: grpc.status.RESOURCE_EXHAUSTED,
              details: `${full}; retry in a second`,
              metadata: retryAfter(1),
            });
            return;
          }
          countedFor = peer;
          this.count(peer);
        }
        timer = setTimeout(() => {
          release();
          this.refused.inc({ reason: "receive_timeout" });
          intercepting.sendStatus({
            code: grpc.status.DEADLINE_EXCEEDED,
            details: `the request did not arrive within ${this.options.receiveTimeoutMs} ms`,
            metadata: new grpc.Metadata(),
          });
        }, this.options.receiveTimeoutMs);
        timer.unref();
        next(
          new grpc.ServerListenerBuilder()
            .withOnReceiveHalfClose((halfClose) => {
              release();
              halfClose();
            })
            .withOnCancel(release)
            .build(),
        );
      },
      sendStatus: (status, next) => {
        release();
        next(status);
      },
    });
    return intercepting;
  };

  private count(peer: string): void {
    this.receiving++;
    this.receivingByPeer.set(peer, (this.receivingByPeer.get(peer) ?? 0) + 1);
    this.gauge.set(this.receiving);
  }

  private uncount(peer: string): void {
    this.receiving--;
    const left = (this.receivingByPeer.get(peer) ?? 1) - 1;
    if (left === 0) this.receivingByPeer.delete(peer);
    else this.receivingByPeer.set(peer, left);
    this.gauge.set(this.receiving);
  }
}

/** gRPC's retry-pushback header: when a refused call may be tried again. */
export function retryAfter(seconds: number): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set("grpc-retry-pushback-ms", String(Math.round(seconds * 1000)));
  return metadata;
}
