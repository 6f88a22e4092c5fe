// The gRPC face of the server: CertificateService (proto/osm/cert/v1). Each call is authenticated,
// its CSR parsed and checked against the caller's identity, then handed to the provider. Every
// refusal becomes a status code and a message a human can act on; nothing here can crash the process.

import * as grpc from "@grpc/grpc-js";
import { identityName, type ServiceIdentity } from "../common/identity.js";
import { LogBudget } from "../common/log-budget.js";
import type { Logger } from "../common/logger.js";
import {
  type Counter,
  type Histogram,
  LATENCY_BUCKETS_SECONDS,
  type MetricsRegistry,
} from "../common/metrics.js";
import { shorten } from "../common/quote.js";
import { CsrError, MAX_CSR_BYTES, parseCsrPem } from "../common/x509/csr.js";
import {
  type CreateCertificateRequest,
  type CreateCertificateResponse,
  certificateServiceDefinition,
  dateToTimestamp,
  durationToMs,
  msToDuration,
  type ReportTrustBundleRequest,
  type ReportTrustBundleResponse,
  type TrustBundleMessage,
  type WatchTrustBundleRequest,
} from "../proto/signing-api.js";
import type { AgentRegistry } from "./agent-registry.js";
import type { CallerAuthenticator } from "./authn.js";
import { decideServiceCertificate, type PolicyLimits } from "./policy.js";
import { type CertificateProvider, ProviderError, type TrustBundle } from "./providers/provider.js";
import type { RenewOrderSource } from "./renew/renew-order-book.js";
import { matchesScope } from "./renew/renew-orders.js";
import { retryAfter } from "./request-guard.js";
import type { SigningLimits } from "./signing-limits.js";

export interface SigningServiceOptions {
  readonly provider: CertificateProvider;
  readonly authenticator: CallerAuthenticator;
  readonly limits: PolicyLimits;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  /** Counts agents per bundle version (root rotation); without it reports are accepted and ignored. */
  readonly agents?: AgentRegistry;
  /** Global in-flight cap and per-identity rate on CreateCertificate (signing-limits.ts). */
  readonly loadLimits?: SigningLimits;
  /** Renew-now orders per caller (operator's scoped orders + the rotation's); else the provider's order. */
  readonly renewOrders?: RenewOrderSource;
}

type Code = keyof typeof grpc.status;

class Refusal extends Error {
  constructor(
    readonly status: Code,
    message: string,
    /** Sent as grpc-retry-pushback-ms: when trying again can succeed. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** Retry hint for a RESOURCE_EXHAUSTED whose source gave none (a backend queue, the token-review budget). */
const DEFAULT_RETRY_AFTER_MS = 2_000;

const CSR_STATUS: Readonly<Record<CsrError["code"], Code>> = {
  CSR_NOT_PEM: "INVALID_ARGUMENT",
  CSR_MALFORMED: "INVALID_ARGUMENT",
  CSR_BAD_SIGNATURE: "INVALID_ARGUMENT",
  CSR_UNSUPPORTED_KEY: "INVALID_ARGUMENT",
  CSR_WEAK_KEY: "INVALID_ARGUMENT",
  CSR_UNSUPPORTED_SIGNATURE: "INVALID_ARGUMENT",
  CSR_TOO_LARGE: "RESOURCE_EXHAUSTED",
};

const PROVIDER_STATUS: Readonly<Record<ProviderError["reason"], Code>> = {
  unavailable: "UNAVAILABLE",
  denied: "PERMISSION_DENIED",
  invalid: "INVALID_ARGUMENT",
  precondition: "FAILED_PRECONDITION",
  internal: "INTERNAL",
  exhausted: "RESOURCE_EXHAUSTED",
  deadline: "DEADLINE_EXCEEDED",
};

export class SigningService {
  private readonly issued: Counter;
  private readonly latency: Histogram;
  private readonly watchers: Counter;
  /** Denials are chosen by callers; their log lines are budgeted (LogBudget). */
  private readonly denialLogBudget = new LogBudget(10, 50);
  /** Open WatchTrustBundle streams, ended by close() so shutdown does not wait for them. */
  private readonly openWatches = new Set<
    grpc.ServerWritableStream<WatchTrustBundleRequest, TrustBundleMessage>
  >();

  constructor(private readonly options: SigningServiceOptions) {
    const { metrics } = options;
    this.issued = metrics
      .counter("osm_cert_server_issuance_total", "CreateCertificate calls by provider and gRPC status code.")
      .zero({ provider: options.provider.name, code: "OK" });
    this.latency = metrics
      .histogram(
        "osm_cert_server_issuance_duration_seconds",
        "CreateCertificate latency by provider and gRPC status code.",
        LATENCY_BUCKETS_SECONDS,
      )
      .zero({ provider: options.provider.name, code: "OK" });
    this.watchers = metrics
      .counter("osm_cert_server_trust_bundle_watches_total", "WatchTrustBundle streams opened.")
      .zero();
  }

  register(server: grpc.Server): void {
    server.addService(certificateServiceDefinition(), {
      CreateCertificate: this.createCertificate.bind(this),
      WatchTrustBundle: this.watchTrustBundle.bind(this),
      ReportTrustBundle: this.reportTrustBundle.bind(this),
    } satisfies grpc.UntypedServiceImplementation);
  }

  private createCertificate(
    call: grpc.ServerUnaryCall<CreateCertificateRequest, CreateCertificateResponse>,
    callback: grpc.sendUnaryData<CreateCertificateResponse>,
  ): void {
    const started = process.hrtime.bigint();
    const provider = this.options.provider.name;
    const finish = (code: Code): void => {
      const labels = { provider, code };
      this.issued.inc(labels);
      this.latency.observe(Number(process.hrtime.bigint() - started) / 1e9, labels);
    };
    const slot = this.options.loadLimits?.enter();
    if (slot !== undefined && typeof slot !== "function") {
      finish("RESOURCE_EXHAUSTED");
      callback({
        code: grpc.status.RESOURCE_EXHAUSTED,
        details: slot.message,
        metadata: retryAfter(slot.retryAfterMs / 1000),
      });
      return;
    }
    this.issue(call).then(
      (response) => {
        slot?.();
        finish("OK");
        callback(null, response);
      },
      (error: unknown) => {
        slot?.();
        const refusal = error instanceof Refusal ? error : this.unexpected(error);
        finish(refusal.status);
        callback({
          code: grpc.status[refusal.status],
          details: refusal.message,
          ...(refusal.retryAfterMs === undefined
            ? {}
            : { metadata: retryAfter(refusal.retryAfterMs / 1000) }),
        });
      },
    );
  }

  private async issue(call: grpc.ServerUnaryCall<CreateCertificateRequest, CreateCertificateResponse>) {
    const { provider, authenticator, limits, logger } = this.options;
    const authn = await authenticator.authenticate(call);
    if (!authn.ok) {
      const hint = authn.status === "RESOURCE_EXHAUSTED" ? DEFAULT_RETRY_AFTER_MS : undefined;
      throw new Refusal(authn.status, authn.message, hint);
    }
    const { caller } = authn;
    const limited = this.options.loadLimits?.charge(identityName(caller.identity));
    if (limited) throw new Refusal("RESOURCE_EXHAUSTED", limited.message, limited.retryAfterMs);

    const csrPem = call.request.csr;
    if (Buffer.byteLength(csrPem) > MAX_CSR_BYTES) {
      throw new Refusal(
        "RESOURCE_EXHAUSTED",
        `CSR is ${Buffer.byteLength(csrPem)} bytes; the limit is ${MAX_CSR_BYTES}`,
      );
    }
    let csr: ReturnType<typeof parseCsrPem>;
    try {
      csr = parseCsrPem(csrPem);
    } catch (error) {
      if (error instanceof CsrError) throw new Refusal(CSR_STATUS[error.code], `bad CSR: ${error.message}`);
      throw error;
    }

    const decision = decideServiceCertificate(
      caller.identity,
      csr,
      durationToMs(call.request.validity),
      limits,
    );
    if (!decision.ok) {
      const budget = decision.code === "PERMISSION_DENIED" ? this.denialLogBudget.take() : null;
      if (budget !== null) {
        // decision.message quotes the CSR only in a short escaped form; the CSR's own fields are
        // summarised the same way, so no caller can fill the log with text of its choosing.
        logger.warn(
          {
            event: "certificate.denied",
            caller: identityName(caller.identity),
            csrCommonName: csr.subjectCommonName === null ? null : shorten(csr.subjectCommonName),
            csrDns: csr.dnsNames.slice(0, 4).map((name) => shorten(name)),
            csrUris: csr.uris.slice(0, 4).map((uri) => shorten(uri)),
            pod: caller.podName,
            podUid: caller.podUid,
            suppressedBefore: budget.suppressedBefore || undefined,
          },
          decision.message,
        );
      }
      throw new Refusal(decision.code, decision.message);
    }

    let issued: Awaited<ReturnType<CertificateProvider["issue"]>>;
    // A caller that gave up (deadline, disconnect) frees what the backend holds for it.
    const cancelled = new AbortController();
    const onCancelled = () => cancelled.abort();
    call.once("cancelled", onCancelled);
    try {
      issued = await provider.issue({
        signal: cancelled.signal,
        csrPem,
        csr,
        profile: "service",
        commonName: decision.commonName,
        dnsNames: decision.dnsNames,
        uris: decision.uris,
        ipAddresses: [],
        validityMs: decision.validityMs,
      });
    } catch (error) {
      if (error instanceof ProviderError) {
        const hint =
          error.reason === "exhausted" ? (error.retryAfterMs ?? DEFAULT_RETRY_AFTER_MS) : undefined;
        throw new Refusal(PROVIDER_STATUS[error.reason], `${provider.name}: ${error.message}`, hint);
      }
      throw error;
    } finally {
      // grpc-js emits "cancelled" when a call's stream closes, after a normal finish too (every
      // call, with grpc-js and node:http2 clients alike): aborting then frees nothing and costs an
      // AbortError each (≈ 3 % of the CPU per CSR in figure 7's profile).
      call.off("cancelled", onCancelled);
    }

    // The audit line: one per issuance, never key material.
    logger.info(
      {
        event: "certificate.issued",
        identity: identityName(caller.identity),
        serial: issued.serialNumber,
        notAfter: issued.notAfter.toISOString(),
        provider: provider.name,
        authn: caller.method,
        pod: caller.podName,
        podUid: caller.podUid,
        validityClamped: decision.clamped || undefined,
        requestedValidityMs: decision.clamped ? durationToMs(call.request.validity) : undefined,
      },
      decision.clamped
        ? "issued certificate (requested validity clamped to the server maximum)"
        : "issued certificate",
    );
    return {
      certificate_chain: [...issued.chainPem],
      trust_bundle: this.bundleMessage(provider.trustBundle(), caller.identity),
      serial_number: issued.serialNumber,
      not_before: dateToTimestamp(issued.notBefore),
      not_after: dateToTimestamp(issued.notAfter),
      validity_clamped: decision.clamped,
    };
  }

  private watchTrustBundle(
    call: grpc.ServerWritableStream<WatchTrustBundleRequest, TrustBundleMessage>,
  ): void {
    void this.options.authenticator.authenticate(call).then((authn) => {
      if (!authn.ok) {
        call.emit("error", { code: grpc.status[authn.status], details: authn.message });
        return;
      }
      if (call.cancelled) return;
      this.watchers.inc();
      const { provider, renewOrders } = this.options;
      const { identity } = authn.caller;
      call.write(this.bundleMessage(provider.trustBundle(), identity));
      const unsubscribeBundle = provider.onTrustBundleChange((bundle) =>
        call.write(this.bundleMessage(bundle, identity)),
      );
      // A scoped renew-now order is written only on the streams of the identities it names.
      const unsubscribeOrders = renewOrders?.onNewOrders((orders) => {
        if (orders.some((order) => matchesScope(order.scope, identity))) {
          call.write(this.bundleMessage(provider.trustBundle(), identity));
        }
      });
      const unsubscribe = () => {
        unsubscribeBundle();
        unsubscribeOrders?.();
      };
      this.openWatches.add(call);
      const leave = this.options.agents?.open(
        typeof call.request?.agent_id === "string" ? call.request.agent_id.slice(0, 64) : "",
        identityName(authn.caller.identity),
        authn.caller.podName ?? authn.caller.podUid ?? null,
      );
      const done = () => {
        unsubscribe();
        leave?.();
        this.openWatches.delete(call);
      };
      call.on("cancelled", done);
      call.on("close", done);
    });
  }

  private reportTrustBundle(
    call: grpc.ServerUnaryCall<ReportTrustBundleRequest, ReportTrustBundleResponse>,
    callback: grpc.sendUnaryData<ReportTrustBundleResponse>,
  ): void {
    void this.options.authenticator.authenticate(call).then((authn) => {
      if (!authn.ok) {
        callback({ code: grpc.status[authn.status], details: authn.message });
        return;
      }
      const { agent_id: agentId, version } = call.request;
      if (this.options.agents === undefined) {
        callback(null, {});
        return;
      }
      if (
        !this.options.agents.report(
          agentId.slice(0, 64),
          identityName(authn.caller.identity),
          version.slice(0, 64),
        )
      ) {
        callback({
          code: grpc.status.FAILED_PRECONDITION,
          details: "no open WatchTrustBundle stream with this agent_id for this caller; open one first",
        });
        return;
      }
      callback(null, {});
    });
  }

  /** Ends every open WatchTrustBundle stream (OK status): agents reconnect to another replica. */
  close(): void {
    for (const call of this.openWatches) call.end();
    this.openWatches.clear();
  }

  private bundleMessage(bundle: TrustBundle, identity: ServiceIdentity): TrustBundleMessage {
    const { renewOrders, provider } = this.options;
    const renew =
      renewOrders !== undefined ? renewOrders.orderFor(identity) : (provider.renewOrder?.() ?? null);
    return {
      trust_domain: this.options.limits.trustDomain,
      root_certificates: [...bundle.roots],
      version: bundle.version,
      renew_before: renew === null ? null : dateToTimestamp(renew.before),
      renew_window: renew === null ? null : msToDuration(renew.windowMs),
    };
  }

  private unexpected(error: unknown): Refusal {
    this.options.logger.error({ err: error }, "unexpected failure while issuing a certificate");
    return new Refusal("INTERNAL", "internal error while issuing the certificate; see the server log");
  }
}
