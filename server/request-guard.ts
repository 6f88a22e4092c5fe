// Bounds what callers can hold on the signing port before they are authenticated (issue 11).
// grpc-js buffers a request until it is complete and only then runs a handler, so without this a
// peer without any credential could open streams, announce large messages, send all but a byte
// and keep the memory forever. Every call must deliver its whole request within a deadline, and
// only a bounded number of calls may be receiving at once across the process; past the cap a new
// call is refused at once with RESOURCE_EXHAUSTED and a retry hint. A long-lived call
// (WatchTrustBundle) is no longer "receiving" once its request arrived, so it is not limited here.

import * as grpc from "@grpc/grpc-js";
import type { Gauge, MetricsRegistry } from "../common/metrics.js";

export interface RequestGuardOptions {
  /** A call's request (message and half-close) must arrive within this. */
  readonly receiveTimeoutMs: number;
  /** Calls that may be receiving their request at once, across all connections. */
  readonly maxReceiving: number;
  readonly metrics: MetricsRegistry;
}

export class RequestGuard {
  private receiving = 0;
  private readonly gauge: Gauge;
  private readonly refused;

  constructor(private readonly options: RequestGuardOptions) {
    this.gauge = options.metrics.gauge(
      "osm_cert_server_requests_receiving",
      "Calls whose request has not fully arrived yet.",
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
    let counted = false;
    const release = () => {
      clearTimeout(timer);
      timer = undefined;
      if (!counted) return;
      counted = false;
      this.receiving--;
      this.gauge.set(this.receiving);
    };
    const intercepting: grpc.ServerInterceptingCall = new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        if (this.receiving >= this.options.maxReceiving) {
          this.refused.inc({ reason: "too_many_receiving" });
          next(new grpc.ServerListenerBuilder().build());
          intercepting.sendStatus({
            code: grpc.status.RESOURCE_EXHAUSTED,
            details: `the server is receiving ${this.receiving} requests already; retry in a second`,
            metadata: retryAfter(1),
          });
          return;
        }
        counted = true;
        this.receiving++;
        this.gauge.set(this.receiving);
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
}

/** gRPC's retry-pushback header: when a refused call may be tried again. */
export function retryAfter(seconds: number): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set("grpc-retry-pushback-ms", String(Math.round(seconds * 1000)));
  return metadata;
}
