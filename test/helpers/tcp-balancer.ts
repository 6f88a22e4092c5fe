// A Kubernetes Service in miniature for tests with several server replicas: each new TCP connection
// goes to the next backend in turn, skipping one that refuses, and bytes are piped untouched (TLS
// ends at the replica, as behind a ClusterIP). A replica that dies takes its connections with it;
// clients reconnect and land on a live one.

import { connect, createServer, type Server, type Socket } from "node:net";

export class TcpBalancer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private next = 0;
  port = 0;

  constructor(private readonly backends: readonly string[]) {
    this.server = createServer((client) => this.accept(client));
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as { port: number }).port;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
  }

  private accept(client: Socket): void {
    this.track(client);
    client.pause();
    client.on("error", () => {});
    const start = this.next++ % this.backends.length;
    const attempt = (tried: number) => {
      if (tried >= this.backends.length || client.destroyed) {
        client.destroy();
        return;
      }
      const [host, port] = (this.backends[(start + tried) % this.backends.length] as string).split(":");
      const upstream = connect({ host, port: Number(port) });
      let connected = false;
      upstream.once("connect", () => {
        connected = true;
        this.track(upstream);
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        client.on("close", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
      });
      upstream.on("error", () => {
        if (!connected) attempt(tried + 1);
      });
    };
    attempt(0);
  }
}
