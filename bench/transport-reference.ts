// Figure 1's transport references (issue 12): servers that answer CreateCertificate-shaped calls
// without signing anything, so that the bench can say what the transport costs per call apart
// from the signing path. Both take the same TLS setup as the real server (mutual TLS, ECDSA P-256
// certificates from the bench's CA) and answer every call with a fixed response of a signed
// chain's size; the load generator checks HTTP 200 and grpc-status 0 as for the real server.
//
//   node dist/bench/transport-reference.js http2|grpc-js CERT KEY CA     (prints server.started)
//
//   http2    Node's HTTP/2 + TLS and gRPC's 5-byte framing by hand: what any Node gRPC server pays
//   grpc-js  @grpc/grpc-js's server with the real service definition and a handler that returns
//            the fixed response at once (no authentication, policy, provider, audit line or metrics)

import { readFileSync } from "node:fs";
import { createSecureServer } from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { type CreateCertificateResponse, certificateServiceDefinition } from "../proto/signing-api.js";

const [mode, certFile, keyFile, caFile] = process.argv.slice(2);
if (certFile === undefined || keyFile === undefined || caFile === undefined) {
  throw new Error("usage: transport-reference.js http2|grpc-js CERT KEY CA");
}
const cert = readFileSync(certFile);
const key = readFileSync(keyFile);
const ca = readFileSync(caFile);

// A leaf and an intermediate's worth of PEM, as a real answer carries.
const response: CreateCertificateResponse = {
  certificate_chain: ["L".repeat(900), "I".repeat(700)],
  trust_bundle: null,
  serial_number: "0123456789abcdef0123456789abcdef",
  not_before: null,
  not_after: null,
  validity_clamped: false,
};
const started = (port: number) =>
  console.log(JSON.stringify({ event: "server.started", address: `127.0.0.1:${port}` }));

if (mode === "http2") {
  const method = certificateServiceDefinition().CreateCertificate;
  if (method === undefined) throw new Error("no CreateCertificate in the service definition");
  const body = method.responseSerialize(response) as Buffer;
  const framed = Buffer.alloc(5 + body.length);
  framed.writeUInt32BE(body.length, 1);
  body.copy(framed, 5);
  const server = createSecureServer({ cert, key, ca, requestCert: true, rejectUnauthorized: true });
  server.on("stream", (stream) => {
    let received = 0;
    stream.on("data", (chunk: Buffer) => {
      received += chunk.length;
    });
    stream.on("end", () => {
      if (received < 5) {
        stream.respond(
          { ":status": 200, "content-type": "application/grpc", "grpc-status": "3" },
          { endStream: true },
        );
        return;
      }
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(framed);
    });
  });
  server.listen(0, "127.0.0.1", () => started((server.address() as { port: number }).port));
} else if (mode === "grpc-js") {
  const server = new grpc.Server({ "grpc.enable_channelz": 0 });
  server.addService(certificateServiceDefinition(), {
    CreateCertificate: (_call: unknown, callback: grpc.sendUnaryData<CreateCertificateResponse>) =>
      callback(null, response),
    WatchTrustBundle: (call: grpc.ServerWritableStream<unknown, unknown>) => call.end(),
    ReportTrustBundle: (_call: unknown, callback: grpc.sendUnaryData<object>) => callback(null, {}),
  });
  const credentials = grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], true);
  server.bindAsync("127.0.0.1:0", credentials, (error, port) => {
    if (error !== null) throw error;
    started(port);
  });
} else {
  throw new Error(`transport-reference.js: unknown mode ${mode}`);
}
