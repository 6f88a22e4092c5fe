// Figure 6's clients (bench/agent-figures.ts), in a process of their own: `streams` StreamSecrets
// streams on one HTTP/2 connection to the agent's SDS socket, each asking for `default` + `ROOTCA`
// and ACKing every response, as Envoy does. Every response's receipt time (Date.now(), taken once
// the whole gRPC message has arrived and been decoded, before the ACK is written) is kept per
// stream; on SIGTERM they are printed as one JSON line {"event":"receipts"} and the process exits.
//
// These clients stand in for Envoy, which is C++ and decodes an SDS response in microseconds. With
// grpc-js + proto-loader on the client side, the two client processes spent ≈ 150 ms of CPU each per
// rotation receiving 500 responses — more than the agent spent sending them, on the same 2 cores —
// so the figure measured the harness as much as the agent. This client does per response what
// Envoy's gRPC mux does, without grpc-js's call machinery: node:http2 directly, gRPC's 5-byte
// length-prefixed framing, a reassembly of the whole message across DATA frames, a decode of the
// DiscoveryResponse and of every resource's Secret with protobufjs from Envoy's canonical protos
// (shipped by @grpc/grpc-js-xds; nothing of the agent's), a check of what Envoy would reject
// (type URLs, names, the certificate + key and the trust bundle present), and an ACK carrying the
// response's version_info and nonce (the node only in a stream's first request, as the bootstrap
// configures Envoy: set_node_on_first_message_only). A response that fails those checks, or a stream that ends with
// a gRPC status other than CANCELLED, is counted as failed (the bench then fails).
//
// The connection's HTTP/2 flow-control windows are Envoy's defaults (256 MiB for the connection and
// each stream; the bootstrap's SDS cluster sets none, agent/envoy-bootstrap.ts), not Node's 64 KiB:
// a client that throttles the agent every 64 KiB would measure the client, not the agent.
//
// Usage: node sds-fanout-client.js <socket> <streams>

import { type ClientHttp2Stream, connect as http2Connect } from "node:http2";
import { connect as netConnect } from "node:net";
import { loadCanonicalSdsRoot, SECRET_TYPE_NAME } from "../proto/build-envoy-sds.js";

const ENVOY_WINDOW = 256 * 1024 * 1024;
const NAMES = ["default", "ROOTCA"];
const NODE = { id: "sidecar~127.0.0.1~bench~default.svc.cluster.local", cluster: "bench" };
const PATH = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const GRPC_CANCELLED = 1;

// Envoy's canonical SDS protos (the agent's build reads the same files into its own reflection JSON).
const root = loadCanonicalSdsRoot();
const SECRET_TYPE_URL = `type.googleapis.com/${SECRET_TYPE_NAME}`;
const DiscoveryRequest = root.lookupType("envoy.service.discovery.v3.DiscoveryRequest");
const DiscoveryResponse = root.lookupType("envoy.service.discovery.v3.DiscoveryResponse");
const SecretType = root.lookupType("envoy.extensions.transport_sockets.tls.v3.Secret");

interface DataSource {
  inline_bytes?: Uint8Array;
}
interface Secret {
  name: string;
  tls_certificate?: { certificate_chain?: DataSource; private_key?: DataSource } | null;
  validation_context?: { trusted_ca?: DataSource } | null;
}
interface Response {
  version_info: string;
  type_url: string;
  nonce: string;
  resources: { type_url: string; value: Uint8Array }[];
}

const nonEmpty = (source: DataSource | undefined) =>
  source?.inline_bytes !== undefined && source.inline_bytes.length > 0;

/** What Envoy's SDS subscription would reject in a response to `default` + `ROOTCA`, or null. */
function invalid(response: Response): string | null {
  if (response.type_url !== SECRET_TYPE_URL) return `type_url ${response.type_url}`;
  if (response.version_info === "" || response.nonce === "") return "no version_info or nonce";
  if (response.resources.length === 0) return "no resources";
  for (const any of response.resources) {
    if (any.type_url !== SECRET_TYPE_URL) return `resource type ${any.type_url}`;
    const secret = SecretType.decode(any.value) as unknown as Secret;
    if (secret.name === "default") {
      const tls = secret.tls_certificate;
      if (!nonEmpty(tls?.certificate_chain ?? undefined) || !nonEmpty(tls?.private_key ?? undefined))
        return "default without certificate and key";
    } else if (secret.name === "ROOTCA") {
      if (!nonEmpty(secret.validation_context?.trusted_ca ?? undefined)) return "ROOTCA without trusted CA";
    } else {
      return `unexpected secret ${secret.name}`;
    }
  }
  return null;
}

/**
 * What the requests of a stream repeat, encoded once: the names and the type URL, and in the first
 * request only, the node (the bootstrap's SDS config source sets set_node_on_first_message_only,
 * agent/envoy-bootstrap.ts). A request is that plus its version_info and response_nonce, encoded
 * apart: protobuf reads concatenated encodings as one merged message, so the agent decodes exactly
 * the request Envoy would send.
 */
const FIRST_REQUEST = DiscoveryRequest.encode({
  node: NODE,
  resource_names: NAMES,
  type_url: SECRET_TYPE_URL,
}).finish();
const LATER_REQUEST = DiscoveryRequest.encode({ resource_names: NAMES, type_url: SECRET_TYPE_URL }).finish();

function frame(constant: Uint8Array, version: string, nonce: string): Buffer {
  const tail = DiscoveryRequest.encode({ version_info: version, response_nonce: nonce }).finish();
  const length = constant.length + tail.length;
  const framed = Buffer.allocUnsafe(5 + length);
  framed[0] = 0; // not compressed
  framed.writeUInt32BE(length, 1);
  framed.set(constant, 5);
  framed.set(tail, 5 + constant.length);
  return framed;
}

const [socket, count] = [process.argv[2] as string, Number(process.argv[3])];
const session = http2Connect("http://localhost", {
  createConnection: () => netConnect(socket),
  settings: { initialWindowSize: ENVOY_WINDOW },
  maxSessionMemory: Number.MAX_SAFE_INTEGER,
});
session.once("remoteSettings", () => session.setLocalWindowSize(ENVOY_WINDOW));
session.on("error", (error) => {
  console.error(`SDS connection: ${error.message}`);
  process.exit(1);
});

const received: number[][] = [];
let failed = 0;
let ready = 0;
/** CPU used once every stream had its first response: what the pushes cost this client. */
let cpuAtReady: NodeJS.CpuUsage | undefined;

/** One StreamSecrets stream: reassembles gRPC messages from DATA frames, decodes, checks, ACKs. */
function follow(stream: ClientHttp2Stream, times: number[]): void {
  let pending: Buffer | null = null;
  let broken = false;
  const fail = (why: string) => {
    if (broken) return;
    broken = true;
    failed++;
    console.error(`stream failed: ${why}`);
    stream.close();
  };
  stream.on("data", (chunk: Buffer) => {
    let data = pending === null ? chunk : Buffer.concat([pending, chunk]);
    pending = null;
    while (!broken) {
      if (data.length < 5) break;
      if (data[0] !== 0) return fail("compressed message");
      const length = data.readUInt32BE(1);
      if (data.length < 5 + length) break;
      const response = DiscoveryResponse.decode(data.subarray(5, 5 + length)) as unknown as Response;
      const why = invalid(response);
      if (why !== null) return fail(why);
      times.push(Date.now());
      if (times.length === 1 && ++ready === count) {
        cpuAtReady = process.cpuUsage();
        console.log(JSON.stringify({ event: "ready", streams: count }));
      }
      stream.write(frame(LATER_REQUEST, response.version_info, response.nonce));
      data = data.subarray(5 + length);
    }
    if (data.length > 0) pending = data;
  });
  const status = (headers: Record<string, unknown>) => {
    const code = headers["grpc-status"];
    if (code !== undefined && Number(code) !== 0 && Number(code) !== GRPC_CANCELLED)
      fail(`grpc-status ${code} ${headers["grpc-message"] ?? ""}`);
  };
  stream.on("response", status);
  stream.on("trailers", status);
  stream.on("error", (error) => fail(error.message));
}

for (let i = 0; i < count; i++) {
  const times: number[] = [];
  received.push(times);
  const stream = session.request(
    { ":method": "POST", ":path": PATH, "content-type": "application/grpc", te: "trailers" },
    { endStream: false },
  );
  follow(stream, times);
  stream.write(frame(FIRST_REQUEST, "", ""));
}

process.on("SIGTERM", () => {
  const cpu = process.cpuUsage(cpuAtReady);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  process.stdout.write(`${JSON.stringify({ event: "receipts", received, failed, cpuMs })}\n`, () =>
    process.exit(0),
  );
});
