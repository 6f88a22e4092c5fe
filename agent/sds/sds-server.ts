// Envoy's Secret Discovery Service on a Unix socket (DESIGN.md §5): the agent's only face to Envoy.
//
// The socket's file mode is the access control (only Envoy's user or group may connect), so gRPC
// runs without TLS. Envoy opens one stream per secret config; hundreds on one socket are normal, and
// a rotation must reach all of them at once (DESIGN.md §12: 1,000 streams within 100 ms). That is
// why there is one cache listener for the whole server, Secrets are encoded once per change (see
// resources.ts), a response but its nonce once per resource set, each stream's protocol state is a
// handful of fields, and the writes go out in slices (onCacheChange). Within one fan-out, streams
// asking for the same names are written the very same bytes: one nonce for the whole fan-out (see
// Push), so nothing is encoded or copied per stream.

import { randomBytes } from "node:crypto";
import { chmod, link, lstat, stat, unlink } from "node:fs/promises";
import { connect } from "node:net";
import { dirname, join, resolve as resolvePath } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { ServiceIdentity } from "../../common/identity.js";
import type { Logger } from "../../common/logger.js";
import type { Counter, Gauge, MetricsRegistry } from "../../common/metrics.js";
import { shorten } from "../../common/quote.js";
import {
  type AnyMessage,
  type DeltaDiscoveryRequest,
  type DeltaDiscoveryResponse,
  type DeltaResource,
  type DiscoveryRequest,
  type DiscoveryResponse,
  type EncodedMessage,
  encodeResponse,
  encodeSharedResponse,
  SECRET_TYPE_URL,
  secretDiscoveryServiceDefinition,
  withNonce,
} from "../../proto/envoy-sds.js";
import type { SecretCache, SecretSnapshot } from "../secret-cache.js";
import { SecretResources } from "./resources.js";

/** FetchSecrets without a deadline waits at most this long for a first valid certificate. */
const FETCH_MAX_WAIT_MS = 10_000;
/**
 * Answer a waiting FetchSecrets a tenth of its time before its deadline (25 ms to 1 s), so the
 * caller reads our reason rather than its own DEADLINE_EXCEEDED, also on a busy node.
 */
function fetchDeadlineMargin(msToDeadline: number): number {
  return Math.min(1_000, Math.max(25, msToDeadline / 10));
}
/** Distinct resource sets kept encoded at once (Envoy asks for a handful). */
const MAX_ENCODED_SETS = 64;
/**
 * Streams written to per turn of the event loop when a change fans out. Writing is ≈ 25-45 µs a
 * stream, so a slice holds other work back for at most ≈ 45 ms. Slices of 100 let each slice's ACKs
 * be read before the next slice was written: 1,000 streams then got the change ≈ 20 % later
 * (figure 6: 177-198 ms against 132-172 ms with one slice, interleaved on a quiet machine).
 */
const FANOUT_SLICE = 1_000;
/** close() lets streams end gracefully for this long before cutting connections. */
const SHUTDOWN_GRACE_MS = 2_000;
/**
 * Names one stream may ask for at once. Envoy asks for one per secret config; anything near this
 * is a misbehaving client, and per-name state must stay bounded whatever a client sends.
 */
export const MAX_NAMES_PER_STREAM = 64;
/** Unknown names warned about per stream; past this, one line says further ones go unlogged. */
const MAX_WARNED_NAMES = 16;

export interface SdsServerOptions {
  /** The secrets to serve and their change events (a SecretCache). */
  readonly cache: Pick<SecretCache, "snapshot" | "validCertificate" | "on" | "off">;
  /** This pod's identity: `service-cert:<ns>/<sa>` is served only for it. */
  readonly identity: ServiceIdentity;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
}

/** State-of-the-world stream (StreamSecrets): what this Envoy asked for and what it was last sent. */
interface SotwStream {
  readonly id: number;
  readonly call: grpc.ServerDuplexStream<DiscoveryRequest, EncodedMessage>;
  /** The names of the latest accepted request. */
  resourceNames: readonly string[];
  /** resourceNames as one string (JSON: names are free-form), to share work between streams. */
  namesKey: string;
  /** Nonce of the latest response; "" until the first one. Requests naming another nonce are stale. */
  lastNonce: string;
  /** version_info of the latest response (what an ACK accepts or a NACK rejects). */
  lastVersionSent: string;
  /** Per-resource versions of the latest response: a change that leaves them equal is not pushed. */
  lastContent: string;
  /** A request (first, or with new names) awaits its answer: sent as soon as every known name exists. */
  responsePending: boolean;
  /** Unknown names already warned about on this stream. */
  readonly warned: Set<string>;
}

/** Incremental stream (DeltaSecrets): subscriptions and the version of each resource Envoy holds. */
interface DeltaStream {
  readonly id: number;
  readonly call: grpc.ServerDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
  /** false until the first request: only it may carry initial_resource_versions. */
  started: boolean;
  readonly subscribed: Set<string>;
  /** name → version Envoy holds (from initial_resource_versions or sent by us; a NACK keeps it). */
  readonly clientVersions: Map<string, string>;
  lastNonce: string;
  readonly warned: Set<string>;
}

type StreamCall<Req, Res> = grpc.ServerDuplexStream<Req, Res>;

/** The Secrets a set of names resolves to, and their versions ("name@version" lines). */
interface Collected {
  readonly resources: AnyMessage[];
  readonly content: string;
}

/**
 * What one fan-out works out once for all its streams. A single nonce serves the whole fan-out:
 * the xDS protocol uses a nonce to tell apart the responses *on one stream* (an ACK names the
 * response it answers; requests naming an older one are stale; envoy/service/discovery/v3/
 * discovery.proto), and a fan-out sends each stream at most one response, under a nonce drawn
 * from the same counter as every other response's, so no stream ever sees a nonce twice. That
 * lets streams asking for the same names share one encoded response, written as is.
 */
interface Push {
  readonly version: string;
  readonly nonce: string;
  /** By namesKey: the Secrets, or null while one of the names is pending. */
  readonly collected: Map<string, Collected | null>;
  /** By Collected.content: the whole response. */
  readonly encoded: Map<string, EncodedMessage>;
}

function statusError(code: grpc.status, details: string): Partial<grpc.StatusObject> & Error {
  return Object.assign(new Error(details), { code, details });
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  // An ACK repeats the names in the same order: checked without building a Set (1,000 per fan-out).
  if (a.every((name, i) => name === b[i])) return true;
  const set = new Set(a);
  return b.every((n) => set.has(n));
}

function tooManyNames(count: number): string {
  return `${count} secret names on one stream; at most ${MAX_NAMES_PER_STREAM} are served (Envoy asks for one per secret config)`;
}

function typeUrlError(typeUrl: string): string {
  return `type_url "${typeUrl}" is not served here: this Secret Discovery Service serves only ${SECRET_TYPE_URL}`;
}

export class SdsServer {
  private readonly cache: SdsServerOptions["cache"];
  private readonly logger: Logger;
  private readonly resources: SecretResources;
  private readonly streamsGauge: Gauge;
  private readonly pushes: Counter;
  private readonly nacks: Counter;

  private readonly sotwStreams = new Set<SotwStream>();
  private readonly deltaStreams = new Set<DeltaStream>();
  /** FetchSecrets calls waiting for a first valid certificate. */
  private readonly fetchWaiters = new Set<() => void>();
  /**
   * Encoded responses without their nonce, by cache version and content key ("name@version"
   * lines): one encoding per resource set and version, whatever the number of streams.
   */
  private readonly encodedSets = new Map<string, Buffer>();
  private server: grpc.Server | undefined;
  private socketPath: string | undefined;
  private closing = false;
  private nextStreamId = 0;
  private nonceCounter = 0;
  /** Increases on every change; a fan-out still in progress stops when a newer one starts. */
  private fanoutGeneration = 0;

  constructor(options: SdsServerOptions) {
    this.cache = options.cache;
    this.logger = options.logger;
    this.resources = new SecretResources({ source: options.cache, identity: options.identity });
    this.streamsGauge = options.metrics
      .gauge("osm_cert_agent_sds_streams", "Open SDS streams (StreamSecrets and DeltaSecrets).")
      .zero();
    this.pushes = options.metrics
      .counter("osm_cert_agent_sds_pushes_total", "SDS responses sent on streams.")
      .zero();
    this.nacks = options.metrics
      .counter("osm_cert_agent_sds_nacks_total", "SDS responses rejected by Envoy (NACK).")
      .zero();
  }

  get streamCount(): number {
    return this.sotwStreams.size + this.deltaStreams.size;
  }

  /** Secrets kept encoded now; bounded whatever names clients send (resources.ts). */
  get encodedSecretCount(): number {
    return this.resources.encodedCount;
  }

  /** Serves SDS on `socketPath` with file mode `mode` (0o600 or 0o660): the mode is the access control. */
  async listen(socketPath: string, mode: number): Promise<void> {
    if (this.server !== undefined) throw new Error("SDS server already listening");
    const path = resolvePath(socketPath);
    await prepareSocketPath(path);

    // Channelz bookkeeping costs time on every call and memory per stream; nobody queries it here.
    const server = new grpc.Server({ "grpc.enable_channelz": 0 });
    server.addService(secretDiscoveryServiceDefinition(), {
      StreamSecrets: (call: StreamCall<DiscoveryRequest, EncodedMessage>) => this.streamSecrets(call),
      DeltaSecrets: (call: StreamCall<DeltaDiscoveryRequest, DeltaDiscoveryResponse>) =>
        this.deltaSecrets(call),
      FetchSecrets: (
        call: grpc.ServerUnaryCall<DiscoveryRequest, DiscoveryResponse>,
        callback: grpc.sendUnaryData<DiscoveryResponse>,
      ) => {
        void this.fetchSecrets(call, callback);
      },
    });

    // The socket is bound under a hidden name beside the final one, given its mode, and only then
    // linked to the name Envoy connects to: the path appears listening and with its final mode, never
    // half-ready (bound but refusing, or 0600 when Envoy's group needs 0660: a client polling for
    // the path saw that in about one start of five). bind() creates the socket with the process
    // umask; a restrictive one while it binds keeps even the hidden name private until chmod.
    const hidden = join(dirname(path), `.s${randomBytes(3).toString("hex")}`);
    const previousUmask = setUmask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.bindAsync(`unix://${hidden}`, grpc.ServerCredentials.createInsecure(), (error) =>
          error === null ? resolve() : reject(new Error(`SDS socket ${path}: ${error.message}`)),
        );
      });
    } finally {
      if (previousUmask !== undefined) setUmask(previousUmask);
    }
    try {
      await chmod(hidden, mode);
      // link(), unlike rename(), never replaces a socket another agent published meanwhile.
      await link(hidden, path).catch((error: NodeJS.ErrnoException) => {
        throw error.code === "EEXIST" ? new Error(`SDS socket ${path} is in use by another process`) : error;
      });
    } catch (error) {
      server.forceShutdown();
      throw error;
    } finally {
      await unlink(hidden).catch(ignoreMissing);
    }

    this.server = server;
    this.socketPath = path;
    this.closing = false;
    this.cache.on("change", this.onCacheChange);
    this.logger.info(
      { event: "sds.listening", socket: path, mode: `0${mode.toString(8)}` },
      "serving Envoy SDS on a Unix socket",
    );
  }

  /** Ends every stream (Envoy reconnects to the next agent), stops serving and removes the socket. */
  async close(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.closing = true;
    this.cache.off("change", this.onCacheChange);
    for (const wake of this.fetchWaiters) wake();
    for (const stream of this.sotwStreams) stream.call.end();
    for (const stream of this.deltaStreams) stream.call.end();
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, SHUTDOWN_GRACE_MS);
      force.unref();
      server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
    this.server = undefined;
    if (this.socketPath !== undefined) await unlink(this.socketPath).catch(ignoreMissing);
    this.socketPath = undefined;
  }

  // ---- Fan-out ----

  /**
   * A change reaches every stream in slices of FANOUT_SLICE, with a turn of the event loop between
   * slices, so that requests arriving meanwhile are not held up behind many thousand writes.
   * Nothing is lost by slicing: a stream answered in between (new names) already
   * holds the new content and is skipped, and a newer change supersedes the rest of an older one,
   * since it reaches every stream itself.
   */
  private readonly onCacheChange = (snapshot: SecretSnapshot): void => {
    if (this.closing) return;
    const started = performance.now();
    this.resources.prune();
    this.encodedSets.clear();
    for (const wake of this.fetchWaiters) wake();
    const generation = ++this.fanoutGeneration;
    // Every stream of this fan-out sees this version: a newer change stops it (generation).
    const push: Push = {
      version: String(snapshot.version),
      nonce: this.nonce(),
      collected: new Map(),
      encoded: new Map(),
    };
    const sotw = [...this.sotwStreams];
    const delta = [...this.deltaStreams];
    let next = 0;
    let pushed = 0;
    let writingMs = 0;
    const slice = () => {
      if (this.closing || generation !== this.fanoutGeneration) return;
      const sliceStarted = performance.now();
      const end = Math.min(next + FANOUT_SLICE, sotw.length + delta.length);
      for (; next < end; next++) {
        if (next < sotw.length) {
          const stream = sotw[next] as SotwStream;
          // Gone meanwhile, or has not asked for anything yet: nothing to tell it.
          if (!this.sotwStreams.has(stream)) continue;
          if (stream.lastNonce === "" && !stream.responsePending) continue;
          if (this.respond(stream, stream.responsePending, push)) pushed++;
        } else {
          const stream = delta[next - sotw.length] as DeltaStream;
          if (this.deltaStreams.has(stream) && this.respondDelta(stream)) pushed++;
        }
      }
      writingMs += performance.now() - sliceStarted;
      if (next < sotw.length + delta.length) {
        setImmediate(slice);
        return;
      }
      if (pushed > 0) {
        this.logger.info(
          {
            event: "sds.pushed",
            version: snapshot.version,
            streams: pushed,
            // From the change to the last write, and the part of it spent writing (the rest is
            // other work the slices let through).
            ms: Math.round((performance.now() - started) * 100) / 100,
            writingMs: Math.round(writingMs * 100) / 100,
          },
          "pushed changed secrets to Envoy",
        );
      }
    };
    slice();
  };

  private nonce(): string {
    this.nonceCounter += 1;
    return this.nonceCounter.toString(36);
  }

  /**
   * The Secrets for `names`, or null while a known name has nothing servable yet (no valid
   * certificate): a cert name is never answered with an empty or partial response. Unknown names
   * are left out, and a set with no known name gets nothing at all.
   */
  private collect(names: readonly string[]): Collected | null {
    const resources: AnyMessage[] = [];
    let content = "";
    for (const name of names) {
      const resolution = this.resources.resolve(name);
      if (resolution.status === "pending") return null;
      if (resolution.status === "unknown") continue;
      resources.push(resolution.secret.resource);
      content += `${name}@${resolution.secret.version}\n`;
    }
    return resources.length === 0 ? null : { resources, content };
  }

  /** The wire form of a response but its nonce, shared by every stream asking for the same set. */
  private sharedResponse(version: string, collected: Collected): Buffer {
    const key = `${version}\n${collected.content}`;
    let bytes = this.encodedSets.get(key);
    if (bytes === undefined) {
      // Bounded: names are chosen by clients, and old sets are useless after a change anyway.
      if (this.encodedSets.size >= MAX_ENCODED_SETS) this.encodedSets.clear();
      bytes = encodeSharedResponse({
        version_info: version,
        type_url: SECRET_TYPE_URL,
        resources: collected.resources,
      });
      this.encodedSets.set(key, bytes);
    }
    return bytes;
  }

  private warnUnknown(streamId: number, warned: Set<string>, names: Iterable<string>): void {
    for (const name of names) {
      if (warned.size > MAX_WARNED_NAMES) return;
      if (warned.has(name)) continue;
      const classification = this.resources.classify(name);
      if (classification.kind !== "unknown") continue;
      warned.add(name);
      if (warned.size > MAX_WARNED_NAMES) {
        this.logger.warn(
          { event: "sds.unknown_resource", stream: streamId },
          `more than ${MAX_WARNED_NAMES} unknown secret names on this stream; further ones are not logged`,
        );
        return;
      }
      this.logger.warn(
        { event: "sds.unknown_resource", stream: streamId, name: shorten(name, 128) },
        classification.reason,
      );
    }
  }

  /** Stops tracking a stream (idempotent: several events report the end of one stream). */
  private forget<S extends SotwStream | DeltaStream>(streams: Set<S>, stream: S): void {
    if (!streams.delete(stream)) return;
    this.streamsGauge.dec();
    this.logger.debug({ event: "sds.stream_closed", stream: stream.id }, "SDS stream closed");
  }

  /** Starts tracking a new stream until any of the events that report its end. */
  private track<S extends SotwStream | DeltaStream, Req>(
    streams: Set<S>,
    stream: S,
    rpc: "StreamSecrets" | "DeltaSecrets",
    onRequest: (request: Req) => void,
  ): void {
    const { call } = stream;
    if (this.closing) {
      call.end();
      return;
    }
    streams.add(stream);
    this.streamsGauge.inc();
    this.logger.debug({ event: "sds.stream_opened", stream: stream.id, rpc }, "SDS stream opened");
    const closed = () => this.forget(streams, stream);
    call.on("data", onRequest);
    call.on("end", () => call.end()); // Envoy half-closed: finish with OK.
    call.on("cancelled", closed);
    call.on("finish", closed);
    call.on("close", closed);
  }

  /** Ends a stream with INVALID_ARGUMENT; nothing more is read from or pushed to it. */
  private reject<S extends SotwStream | DeltaStream>(streams: Set<S>, stream: S, message: string): void {
    this.forget(streams, stream);
    stream.call.removeAllListeners("data");
    this.logger.warn({ event: "sds.stream_rejected", stream: stream.id }, message);
    stream.call.emit("error", statusError(grpc.status.INVALID_ARGUMENT, message));
  }

  // ---- StreamSecrets (state of the world) ----

  private streamSecrets(call: StreamCall<DiscoveryRequest, EncodedMessage>): void {
    const stream: SotwStream = {
      id: ++this.nextStreamId,
      call,
      resourceNames: [],
      namesKey: "[]",
      lastNonce: "",
      lastVersionSent: "",
      lastContent: "",
      responsePending: false,
      warned: new Set(),
    };
    this.track(this.sotwStreams, stream, "StreamSecrets", (request: DiscoveryRequest) =>
      this.onRequest(stream, request),
    );
  }

  private onRequest(stream: SotwStream, request: DiscoveryRequest): void {
    if (this.closing) return;
    if (request.type_url !== "" && request.type_url !== SECRET_TYPE_URL) {
      this.reject(this.sotwStreams, stream, typeUrlError(request.type_url));
      return;
    }
    const nonce = request.response_nonce;
    if (nonce !== "" && nonce !== stream.lastNonce) {
      // Answers a response that has since been superseded; the reply to the newer one will follow.
      this.logger.debug(
        { event: "sds.stale_request", stream: stream.id, nonce },
        "ignoring SDS request with a stale nonce",
      );
      return;
    }
    if (request.resource_names.length > MAX_NAMES_PER_STREAM) {
      this.reject(this.sotwStreams, stream, tooManyNames(request.resource_names.length));
      return;
    }
    const namesChanged = nonce === "" || !sameNames(stream.resourceNames, request.resource_names);
    if (namesChanged) {
      stream.resourceNames = [...request.resource_names];
      stream.namesKey = JSON.stringify(stream.resourceNames);
      this.warnUnknown(stream.id, stream.warned, stream.resourceNames);
    }

    if (request.error_detail !== null) {
      this.nacks.inc();
      this.logger.warn(
        {
          event: "sds.nack",
          stream: stream.id,
          node: request.node?.id,
          names: stream.resourceNames,
          rejectedVersion: stream.lastVersionSent,
          keptVersion: request.version_info,
          code: request.error_detail.code,
          error: request.error_detail.message,
        },
        "Envoy rejected the secrets sent",
      );
      // Sending the same content again would only be rejected again: wait for the next change.
      if (!namesChanged) return;
    } else if (!namesChanged) {
      return; // ACK: Envoy holds what we sent; nothing to say until something changes.
    }
    // A first request, or new names: answer with the current state, as soon as it exists.
    this.respond(stream, true);
  }

  /**
   * Sends the current state of the stream's names, unless it is not servable yet (the request stays
   * pending) or, when not `force`d, it equals what the stream was last sent. Returns whether it sent.
   */
  private respond(stream: SotwStream, force: boolean, push?: Push): boolean {
    const collected =
      push === undefined ? this.collect(stream.resourceNames) : this.collectForPush(push, stream);
    if (collected === null) {
      stream.responsePending = true;
      return false;
    }
    if (!force && collected.content === stream.lastContent) return false;
    let version: string;
    let nonce: string;
    let message: EncodedMessage;
    if (push === undefined) {
      version = String(this.cache.snapshot().version);
      nonce = this.nonce();
      message = withNonce(this.sharedResponse(version, collected), nonce);
    } else {
      ({ version, nonce } = push);
      message = this.pushResponse(push, collected);
    }
    stream.lastNonce = nonce;
    stream.lastVersionSent = version;
    stream.lastContent = collected.content;
    stream.responsePending = false;
    stream.call.write(message);
    // The write's backpressure signal is ignored on purpose: a response is a few KB, a change comes
    // at most every few hours, and Envoy reads promptly; queueing it is the right thing either way.
    this.pushes.inc();
    return true;
  }

  /** collect() once per distinct set of names in a fan-out (bounded like encodedSets). */
  private collectForPush(push: Push, stream: SotwStream): Collected | null {
    let collected = push.collected.get(stream.namesKey);
    if (collected === undefined) {
      collected = this.collect(stream.resourceNames);
      if (push.collected.size < MAX_ENCODED_SETS) push.collected.set(stream.namesKey, collected);
    }
    return collected;
  }

  /** The fan-out's whole response for `collected`, encoded once and written as is to every stream. */
  private pushResponse(push: Push, collected: Collected): EncodedMessage {
    let message = push.encoded.get(collected.content);
    if (message === undefined) {
      message = encodeResponse({
        version_info: push.version,
        type_url: SECRET_TYPE_URL,
        resources: collected.resources,
        nonce: push.nonce,
      });
      if (push.encoded.size < MAX_ENCODED_SETS) push.encoded.set(collected.content, message);
    }
    return message;
  }

  // ---- DeltaSecrets (incremental) ----

  private deltaSecrets(call: StreamCall<DeltaDiscoveryRequest, DeltaDiscoveryResponse>): void {
    const stream: DeltaStream = {
      id: ++this.nextStreamId,
      call,
      started: false,
      subscribed: new Set(),
      clientVersions: new Map(),
      lastNonce: "",
      warned: new Set(),
    };
    this.track(this.deltaStreams, stream, "DeltaSecrets", (request: DeltaDiscoveryRequest) =>
      this.onDeltaRequest(stream, request),
    );
  }

  private onDeltaRequest(stream: DeltaStream, request: DeltaDiscoveryRequest): void {
    if (this.closing) return;
    if (request.type_url !== "" && request.type_url !== SECRET_TYPE_URL) {
      this.reject(this.deltaStreams, stream, typeUrlError(request.type_url));
      return;
    }
    if (!stream.started) {
      stream.started = true;
      // What Envoy already holds from before a reconnect: not re-sent while still current.
      const initial = Object.keys(request.initial_resource_versions).length;
      if (initial > MAX_NAMES_PER_STREAM) {
        this.reject(this.deltaStreams, stream, tooManyNames(initial));
        return;
      }
      for (const [name, version] of Object.entries(request.initial_resource_versions)) {
        stream.clientVersions.set(name, version);
      }
    } else {
      // A subscription request after the first always gets the resource, even one Envoy had.
      for (const name of request.resource_names_subscribe) stream.clientVersions.delete(name);
    }
    if (request.error_detail !== null) {
      this.nacks.inc();
      this.logger.warn(
        {
          event: "sds.nack",
          stream: stream.id,
          node: request.node?.id,
          nonce: request.response_nonce,
          stale: request.response_nonce !== stream.lastNonce,
          code: request.error_detail.code,
          error: request.error_detail.message,
        },
        "Envoy rejected the secrets sent",
      );
      // clientVersions already records what was rejected, so it is not sent again until it changes.
    }
    for (const name of request.resource_names_unsubscribe) {
      stream.subscribed.delete(name);
      stream.clientVersions.delete(name);
    }
    for (const name of request.resource_names_subscribe) stream.subscribed.add(name);
    if (stream.subscribed.size > MAX_NAMES_PER_STREAM) {
      this.reject(this.deltaStreams, stream, tooManyNames(stream.subscribed.size));
      return;
    }
    this.warnUnknown(stream.id, stream.warned, request.resource_names_subscribe);
    // Subscription changes are applied whatever the nonce: in the incremental protocol they are
    // deltas, and dropping one would lose it. Only what differs from Envoy's versions is sent.
    this.respondDelta(stream);
  }

  /**
   * Sends the subscribed resources whose version differs from what Envoy holds. Unknown names are
   * never answered — not even as removed_resources: Envoy rejects an SDS update that carries no
   * Secret, and a resource, once served, never disappears (an expired certificate is simply no
   * longer re-sent) — so removed_resources stays empty.
   */
  private respondDelta(stream: DeltaStream): boolean {
    const resources: DeltaResource[] = [];
    for (const name of stream.subscribed) {
      const resolution = this.resources.resolve(name);
      if (resolution.status !== "ready") continue;
      const { version, resource } = resolution.secret;
      if (stream.clientVersions.get(name) === version) continue;
      resources.push({ name, version, resource });
    }
    if (resources.length === 0) return false;
    for (const r of resources) stream.clientVersions.set(r.name, r.version);
    const nonce = this.nonce();
    stream.lastNonce = nonce;
    stream.call.write({
      system_version_info: String(this.cache.snapshot().version),
      resources,
      type_url: SECRET_TYPE_URL,
      removed_resources: [],
      nonce,
    });
    this.pushes.inc();
    return true;
  }

  // ---- FetchSecrets (unary) ----

  private async fetchSecrets(
    call: grpc.ServerUnaryCall<DiscoveryRequest, DiscoveryResponse>,
    callback: grpc.sendUnaryData<DiscoveryResponse>,
  ): Promise<void> {
    const request = call.request;
    const id = ++this.nextStreamId;
    if (request.type_url !== "" && request.type_url !== SECRET_TYPE_URL) {
      callback(statusError(grpc.status.INVALID_ARGUMENT, typeUrlError(request.type_url)));
      return;
    }
    const names = request.resource_names;
    this.warnUnknown(id, new Set(), names);
    if (names.every((name) => this.resources.classify(name).kind === "unknown")) {
      const listed = names.length === 0 ? "no resource names" : names.map((n) => `"${n}"`).join(", ");
      callback(statusError(grpc.status.NOT_FOUND, `none of the requested secrets exists here (${listed})`));
      return;
    }

    const deadline = deadlineMs(call.getDeadline());
    const waitUntil = Math.min(
      deadline - fetchDeadlineMargin(deadline - Date.now()),
      Date.now() + FETCH_MAX_WAIT_MS,
    );
    let collected = this.collect(names);
    while (collected === null && !this.closing && !call.cancelled && Date.now() < waitUntil) {
      // No valid certificate yet (first issuance in flight, or an expired one): wait for a change.
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.fetchWaiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, waitUntil - Date.now());
        this.fetchWaiters.add(done);
      });
      collected = this.collect(names);
    }
    if (call.cancelled) return;
    if (collected === null) {
      callback(statusError(grpc.status.UNAVAILABLE, "no valid certificate to serve yet; retry shortly"));
      return;
    }
    callback(null, {
      version_info: String(this.cache.snapshot().version),
      resources: collected.resources,
      type_url: SECRET_TYPE_URL,
      nonce: this.nonce(),
    });
  }
}

function deadlineMs(deadline: grpc.Deadline): number {
  return typeof deadline === "number" ? deadline : deadline.getTime();
}

function ignoreMissing(error: NodeJS.ErrnoException): void {
  if (error.code !== "ENOENT") throw error;
}

/** Sets the process umask where that is allowed (not in worker threads); returns the previous one. */
function setUmask(mask: number): number | undefined {
  try {
    return process.umask(mask);
  } catch {
    return undefined;
  }
}

/**
 * Makes `path` bindable: its directory must exist, and a socket left by a dead agent (a container
 * restart keeps the shared volume) is removed. Anything else at the path — a regular file, or a
 * socket some live process still serves — is refused rather than deleted.
 */
async function prepareSocketPath(path: string): Promise<void> {
  const dir = dirname(path);
  const dirStat = await stat(dir).catch(() => null);
  if (dirStat === null || !dirStat.isDirectory()) {
    throw new Error(`SDS socket directory ${dir} does not exist (it is normally a volume shared with Envoy)`);
  }
  const existing = await lstat(path).catch(() => null);
  if (existing === null) return;
  if (!existing.isSocket())
    throw new Error(`SDS socket path ${path} exists and is not a socket; refusing to replace it`);
  if (await socketIsServed(path)) throw new Error(`SDS socket ${path} is in use by another process`);
  await unlink(path).catch(ignoreMissing);
}

function socketIsServed(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}
