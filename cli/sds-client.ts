// A minimal Envoy-like SDS client for the demo: one StreamSecrets stream, ACKing every response
// as Envoy does, and handing each new set of secrets to the caller.

import * as grpc from "@grpc/grpc-js";
import type { DiscoveryResponse } from "../proto/envoy-sds.js";
import { decodeSecret, SECRET_TYPE_URL, secretDiscoveryServiceDefinition } from "../proto/envoy-sds.js";

export interface SdsSecret {
  readonly name: string;
  readonly certificateChain?: string;
  readonly privateKey?: string;
  readonly trustedCa?: string;
}

type Untyped = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export class SdsWatch {
  private readonly client: Untyped;
  private readonly call: grpc.ClientDuplexStream<object, DiscoveryResponse>;
  private readonly queue: Map<string, SdsSecret>[] = [];
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;

  constructor(
    socketPath: string,
    private readonly names: readonly string[],
  ) {
    const Client = grpc.makeGenericClientConstructor(
      secretDiscoveryServiceDefinition(),
      "SecretDiscoveryService",
    );
    this.client = new Client(`unix://${socketPath}`, grpc.credentials.createInsecure()) as Untyped;
    this.call = (this.client.StreamSecrets as () => grpc.ClientDuplexStream<object, DiscoveryResponse>).call(
      this.client,
    );
    this.call.on("data", (response: DiscoveryResponse) => {
      const secrets = new Map<string, SdsSecret>();
      for (const any of response.resources) {
        const secret = decodeSecret(any.value);
        const text = (b: Buffer | Uint8Array | undefined) =>
          b === undefined || b.length === 0 ? undefined : Buffer.from(b).toString("utf8");
        secrets.set(secret.name, {
          name: secret.name,
          certificateChain: text(secret.tls_certificate?.certificate_chain?.inline_bytes),
          privateKey: text(secret.tls_certificate?.private_key?.inline_bytes),
          trustedCa: text(secret.validation_context?.trusted_ca?.inline_bytes),
        });
      }
      this.queue.push(secrets);
      this.send(response.version_info, response.nonce);
      this.waiter?.();
    });
    this.call.on("error", (error: Error) => {
      if ((error as grpc.ServiceError).code !== grpc.status.CANCELLED) this.failure = error;
      this.waiter?.();
    });
    this.send("", "");
  }

  /** The next set of secrets pushed on the stream. */
  async nextUpdate(timeoutMs: number): Promise<Map<string, SdsSecret>> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.failure !== undefined) throw this.failure;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no SDS update within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    return this.queue.shift() as Map<string, SdsSecret>;
  }

  close(): void {
    this.call.cancel();
    this.client.close();
  }

  private send(version: string, nonce: string): void {
    this.call.write({
      node: { id: "demo~127.0.0.1~demo~osm-cert.local", cluster: "demo" },
      resource_names: [...this.names],
      type_url: SECRET_TYPE_URL,
      version_info: version,
      response_nonce: nonce,
    });
  }
}
