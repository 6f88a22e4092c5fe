// The admission endpoint: HTTPS, POST /mutate-pod-v1. Everything arriving here is untrusted until
// parsed: method, content type and size are checked before the body is read, and no request can
// throw past the handler. The serving identity is swapped in place (setSecureContext) so a renewed
// certificate reaches new connections without a restart.

import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import type { HostPort } from "../common/admin-http.js";
import type { Logger } from "../common/logger.js";
import { LATENCY_BUCKETS_SECONDS, type MetricsRegistry } from "../common/metrics.js";
import { type AdmissionRequest, admissionResponse, parseAdmissionReview } from "./admission.js";
import type { PodReview } from "./pod-admission.js";

export const MUTATE_PATH = "/mutate-pod-v1";
/** The API server caps objects at 3 MiB; an AdmissionReview adds its envelope (and oldObject on UPDATE). */
export const DEFAULT_MAX_BODY_BYTES = 7 * 1024 * 1024;

export interface ServingIdentity {
  readonly certPem: string;
  readonly keyPem: string;
}

export interface AdmissionServerOptions {
  readonly identity: ServingIdentity;
  readonly review: (request: AdmissionRequest) => PodReview;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly maxBodyBytes?: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export class AdmissionServer {
  private readonly server: Server;
  private readonly maxBodyBytes: number;
  private readonly admissions;
  private readonly latency;

  constructor(private readonly options: AdmissionServerOptions) {
    this.maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.admissions = options.metrics
      .counter(
        "osm_cert_webhook_admissions_total",
        "Admission requests by result: injected, unchanged, skipped, refused, bad_request.",
      )
      .zero({ result: "injected" })
      .zero({ result: "unchanged" })
      .zero({ result: "skipped" })
      .zero({ result: "refused" })
      .zero({ result: "bad_request" });
    this.latency = options.metrics
      .histogram(
        "osm_cert_webhook_admission_duration_seconds",
        "Time from request to answer.",
        LATENCY_BUCKETS_SECONDS,
      )
      .zero();
    this.server = createServer(
      {
        cert: options.identity.certPem,
        key: options.identity.keyPem,
        minVersion: "TLSv1.2",
        // The API server calls with a 10s default webhook timeout; nothing legitimate is slower.
        requestTimeout: 15_000,
        headersTimeout: 10_000,
      },
      (req, res) => {
        this.handle(req, res).catch((error: unknown) => {
          options.logger.error(
            { event: "admission.failed", error: String(error) },
            "admission handler failed",
          );
          if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
          res.end("internal error\n");
        });
      },
    );
    // A client that hangs up or sends garbage TLS must not surface as an unhandled 'error'.
    this.server.on("tlsClientError", () => {});
    this.server.on("clientError", (_error, socket) => socket.destroy());
  }

  /** New connections use this identity from now on; open ones keep theirs. */
  setIdentity(identity: ServingIdentity): void {
    this.server.setSecureContext({ cert: identity.certPem, key: identity.keyPem });
  }

  async listen(address: HostPort): Promise<HostPort> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(address.port, address.host, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    const bound = this.server.address() as AddressInfo;
    return { host: bound.address, port: bound.port };
  }

  async close(): Promise<void> {
    this.server.closeIdleConnections();
    const force = setTimeout(() => this.server.closeAllConnections(), 5_000);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    clearTimeout(force);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = process.hrtime.bigint();
    let body: string;
    try {
      body = await this.readRequest(req);
    } catch (error) {
      if (!(error instanceof HttpError)) throw error;
      this.reject(res, error);
      // Stop reading an oversized or unwanted body; the connection is not reused.
      if (!req.complete) req.socket.destroySoon();
      return;
    }
    const parsed = parseAdmissionReview(body);
    if (!parsed.ok) {
      this.reject(res, new HttpError(400, parsed.message));
      return;
    }
    const { request } = parsed;
    const review = this.options.review(request);
    this.admissions.inc({ result: review.outcome });
    this.latency.observe(Number(process.hrtime.bigint() - started) / 1e9);
    const answer = JSON.stringify(admissionResponse(request.uid, review.answer));
    res.writeHead(200, { "content-type": "application/json" }).end(answer);
    const level = review.outcome === "injected" || review.outcome === "refused" ? "info" : "debug";
    this.options.logger[level](
      {
        event: `admission.${review.outcome}`,
        uid: request.uid,
        namespace: request.namespace,
        pod: request.name || podName(request.object),
        dryRun: request.dryRun,
      },
      review.reason,
    );
  }

  private async readRequest(req: IncomingMessage): Promise<string> {
    const path = (req.url ?? "/").split("?")[0];
    if (path !== MUTATE_PATH) throw new HttpError(404, `not found; the webhook serves POST ${MUTATE_PATH}`);
    if (req.method !== "POST") throw new HttpError(405, "only POST is served", { allow: "POST" });
    const type = (req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
    if (type !== "application/json") throw new HttpError(415, "content-type must be application/json");
    const declared = Number(req.headers["content-length"] ?? Number.NaN);
    if (declared > this.maxBodyBytes) throw new HttpError(413, `body larger than ${this.maxBodyBytes} bytes`);
    // Events rather than async iteration: leaving a for-await early destroys the socket before
    // the 413 can be written.
    return new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const onData = (chunk: Buffer) => {
        size += chunk.length;
        if (size <= this.maxBodyBytes) {
          chunks.push(chunk);
          return;
        }
        req.off("data", onData).pause();
        reject(new HttpError(413, `body larger than ${this.maxBodyBytes} bytes`));
      };
      req.on("data", onData);
      req.once("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
      // Listen for every error, not once: a second one (reset after abort) would otherwise crash.
      req.on("error", (error) => reject(new HttpError(400, `request failed: ${error.message}`)));
    });
  }

  private reject(res: ServerResponse, error: HttpError): void {
    this.admissions.inc({ result: "bad_request" });
    res
      .writeHead(error.status, { "content-type": "text/plain", connection: "close", ...error.headers })
      .end(`${error.message}\n`);
    this.options.logger.debug({ event: "admission.rejected", status: error.status }, error.message);
  }
}

function podName(object: unknown): string {
  const metadata = (object as { metadata?: { name?: unknown; generateName?: unknown } } | null)?.metadata;
  if (typeof metadata?.name === "string") return metadata.name;
  return typeof metadata?.generateName === "string" ? `${metadata.generateName}*` : "";
}
