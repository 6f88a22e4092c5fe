// A small TCP balancer for tests, as a Kubernetes Service spreads connections over replicas: each
// new connection goes to the next backend in turn; when that backend refuses the connection (its
// process is gone), the next one is tried, as a client's reconnect would land on a live endpoint.
// Bytes are piped untouched, so TLS runs end to end between client and replica.

import { createConnection, createServer, type Server, type Socket } from "node:net";

export interface TcpBalancerOptions {
  /**
   * Connect to a backend from 127.0.0.2–127.0.0.251 (picked by the client's port) instead of
   * 127.0.0.1, so a replica sees callers spread over many addresses, as pods have their own IPs.
   * Linux routes all of 127/8 to loopback.
   */
  readonly spreadSourceAddresses?: boolean;
}

export class TcpBalancer {
  private next = 0;
  private readonly sockets = new Set<Socket>();
  /** Connections opened per backend index. */
  readonly connections: number[];

  private constructor(
    private readonly server: Server,
    readonly backends: string[],
    private readonly options: TcpBalancerOptions,
  ) {
    this.connections = backends.map(() => 0);
  }

  static async start(backends: readonly string[], options: TcpBalancerOptions = {}): Promise<TcpBalancer> {
    const server = createServer();
    const balancer = new TcpBalancer(server, [...backends], options);
    server.on("connection", (client) => balancer.accept(client));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return balancer;
  }

  get address(): string {
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("balancer not listening");
    return `127.0.0.1:${address.port}`;
  }

  /** Points backend `index` at a new address (a replica restarted on another port). */
  replace(index: number, backend: string): void {
    this.backends[index] = backend;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    this.track(client);
    client.pause();
    const first = this.next++ % this.backends.length;
    const attempt = (tried: number) => {
      if (tried >= this.backends.length || client.destroyed) {
        client.destroy();
        return;
      }
      const index = (first + tried) % this.backends.length;
      const [host, port] = splitHostPort(this.backends[index] as string);
      const upstream = createConnection({
        host,
        port,
        ...(this.options.spreadSourceAddresses
          ? { localAddress: `127.0.0.${2 + ((client.remotePort ?? 0) % 250)}` }
          : {}),
      });
      const refused = () => attempt(tried + 1);
      upstream.once("error", refused);
      upstream.once("connect", () => {
        upstream.off("error", refused);
        this.connections[index] = (this.connections[index] ?? 0) + 1;
        this.track(upstream);
        upstream.on("error", () => client.destroy());
        client.on("error", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
        client.on("close", () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(0);
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
  }
}

function splitHostPort(address: string): [string, number] {
  const colon = address.lastIndexOf(":");
  return [address.slice(0, colon), Number(address.slice(colon + 1))];
}
