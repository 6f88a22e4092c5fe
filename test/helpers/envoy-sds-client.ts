// An SDS client as Envoy is one: built from Envoy's canonical protos (shipped by @grpc/grpc-js-xds),
// not from anything of ours, so the tests check the agent against the real contract.

import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import {
  envoyProtoIncludeDirs,
  loadCanonicalSdsRoot,
  SDS_PROTO_FILES,
  SDS_SERVICE_NAME,
  SECRET_TYPE_NAME,
} from "../../proto/build-envoy-sds.js";

export const SECRET_TYPE_URL = `type.googleapis.com/${SECRET_TYPE_NAME}`;

// The canonical .proto files themselves (the build's loader, not the agent's reflection JSON).
const definition = loadSync([...SDS_PROTO_FILES], {
  includeDirs: envoyProtoIncludeDirs(),
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const service = definition[SDS_SERVICE_NAME] as grpc.ServiceDefinition;
const SdsClient = grpc.makeGenericClientConstructor(service, "SecretDiscoveryService");

/** The client class built from Envoy's protos, for callers that need their own channel options. */
export function sdsClientConstructor(): grpc.ServiceClientConstructor {
  return SdsClient;
}

const root = loadCanonicalSdsRoot();
const SecretType = root.lookupType("envoy.extensions.transport_sockets.tls.v3.Secret");

export interface DecodedSecret {
  name: string;
  certificateChain?: string;
  privateKey?: string;
  trustedCa?: string;
}

export interface SdsResponse {
  version_info: string;
  nonce: string;
  type_url: string;
  resources: { type_url: string; value: Buffer }[];
}

export function decodeSecrets(response: SdsResponse): DecodedSecret[] {
  return response.resources.map((any) => {
    if (any.type_url !== SECRET_TYPE_URL) throw new Error(`unexpected resource type ${any.type_url}`);
    const secret = SecretType.toObject(SecretType.decode(any.value), { bytes: String }) as {
      name: string;
      tls_certificate?: {
        certificate_chain?: { inline_bytes?: string };
        private_key?: { inline_bytes?: string };
      };
      validation_context?: { trusted_ca?: { inline_bytes?: string } };
    };
    const text = (b64: string | undefined) =>
      b64 === undefined ? undefined : Buffer.from(b64, "base64").toString("utf8");
    return {
      name: secret.name,
      certificateChain: text(secret.tls_certificate?.certificate_chain?.inline_bytes),
      privateKey: text(secret.tls_certificate?.private_key?.inline_bytes),
      trustedCa: text(secret.validation_context?.trusted_ca?.inline_bytes),
    };
  });
}

type Untyped = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export function connectSds(socketPath: string): Untyped {
  return new SdsClient(`unix://${socketPath}`, grpc.credentials.createInsecure()) as Untyped;
}

/** A StreamSecrets stream with a queue of responses, driven like Envoy drives it. */
export class SdsStream {
  readonly responses: SdsResponse[] = [];
  private readonly call: grpc.ClientDuplexStream<object, SdsResponse>;
  private waiters: (() => void)[] = [];
  error: grpc.ServiceError | undefined;

  constructor(client: Untyped) {
    this.call = (client.StreamSecrets as () => grpc.ClientDuplexStream<object, SdsResponse>).call(client);
    this.call.on("data", (response: SdsResponse) => {
      this.responses.push(response);
      this.wake();
    });
    this.call.on("error", (error: grpc.ServiceError) => {
      this.error = error;
      this.wake();
    });
  }

  request(names: string[], ack?: { version: string; nonce: string }, errorDetail?: string): void {
    this.call.write({
      node: { id: "sidecar~127.0.0.1~test~default.svc.cluster.local", cluster: "test" },
      resource_names: names,
      type_url: SECRET_TYPE_URL,
      version_info: ack?.version ?? "",
      response_nonce: ack?.nonce ?? "",
      error_detail: errorDetail === undefined ? null : { code: 3, message: errorDetail },
    });
  }

  /** The next response after the `seen` ones already consumed; null if none arrives in time. */
  async next(seen: number, timeoutMs: number): Promise<SdsResponse | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.responses.length <= seen) {
      if (this.error !== undefined) throw this.error;
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.responses[seen] as SdsResponse;
  }

  end(): void {
    this.call.cancel();
  }

  /**
   * Half-closes the stream and waits for the server to finish it with a status, as Envoy does when
   * it drops a secret config: no RST_STREAM (Node's HTTP/2 counts frames that reach an already
   * closed stream and closes the whole session after a thousand of them).
   */
  async finish(): Promise<void> {
    const done = new Promise<void>((resolve) => this.call.once("status", () => resolve()));
    this.call.end();
    await done;
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
