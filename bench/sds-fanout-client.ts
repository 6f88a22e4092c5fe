// Figure 6's clients (bench/agent-figures.ts), in a process of their own: `streams` StreamSecrets
// streams on one connection to the agent's SDS socket, each asking for `default` + `ROOTCA` and
// ACKing every response, as Envoy does. Every response's receipt time (Date.now(), taken when
// grpc-js hands the decoded message over, before the ACK is written) is kept per stream; on SIGTERM
// they are printed as one JSON line {"event":"receipts"} and the process exits.
//
// The connection's HTTP/2 flow-control windows are Envoy's defaults (256 MiB; the bootstrap's SDS
// cluster sets none, agent/envoy-bootstrap.ts), not grpc-js's 64 KiB: a client that throttles the
// agent every 64 KiB would measure the client, not the agent.
//
// Usage: node sds-fanout-client.js <socket> <streams>

import * as grpc from "@grpc/grpc-js";
import { SECRET_TYPE_URL, sdsClientConstructor } from "../test/helpers/envoy-sds-client.js";

const ENVOY_WINDOW = 256 * 1024 * 1024;
const NAMES = ["default", "ROOTCA"];
const NODE = { id: "sidecar~127.0.0.1~bench~default.svc.cluster.local", cluster: "bench" };

interface Response {
  version_info: string;
  nonce: string;
}

const [socket, count] = [process.argv[2] as string, Number(process.argv[3])];
const Client = sdsClientConstructor();
const client = new Client(`unix://${socket}`, grpc.credentials.createInsecure(), {
  "grpc-node.flow_control_window": ENVOY_WINDOW,
}) as unknown as grpc.Client & { StreamSecrets(): grpc.ClientDuplexStream<object, Response> };

const received: number[][] = [];
let failed = 0;
let ready = 0;
for (let i = 0; i < count; i++) {
  const times: number[] = [];
  received.push(times);
  const call = client.StreamSecrets();
  const request = (ack?: Response) =>
    call.write({
      node: NODE,
      resource_names: NAMES,
      type_url: SECRET_TYPE_URL,
      version_info: ack?.version_info ?? "",
      response_nonce: ack?.nonce ?? "",
      error_detail: null,
    });
  call.on("data", (response: Response) => {
    times.push(Date.now());
    if (times.length === 1 && ++ready === count)
      console.log(JSON.stringify({ event: "ready", streams: count }));
    request(response);
  });
  call.on("error", (error: grpc.ServiceError) => {
    if (error.code !== grpc.status.CANCELLED) failed++;
  });
  request();
}

process.on("SIGTERM", () => {
  process.stdout.write(`${JSON.stringify({ event: "receipts", received, failed })}\n`, () => process.exit(0));
});
