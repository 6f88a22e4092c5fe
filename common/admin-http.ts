// The loopback admin endpoint both processes expose: /healthz, /readyz, /metrics and a JSON status.

import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { LoopStallMonitor } from "./loop-stall.js";
import type { MetricsRegistry } from "./metrics.js";
import { type ProcessMetrics, registerProcessMetrics } from "./process-metrics.js";

export interface AdminHandlers {
  readonly metrics: MetricsRegistry;
  /** null when ready; otherwise why not, shown to whoever probes. */
  readonly notReadyReason: () => string | null;
  /** The JSON of /status (a promise when it is gathered from other processes). */
  readonly status?: () => unknown;
  /**
   * /metrics from more than this process (the server's workers, server/workers.ts): given this
   * process's own exposition, the whole text.
   */
  readonly gatherMetrics?: (own: string) => Promise<string>;
  /** /healthz fails for a while after the event loop stalled at least this long (default 10 s). */
  readonly stallThresholdMs?: number;
}

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export function parseHostPort(text: string): HostPort {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[3]) : Number.NaN;
  if (!match || port > 65535)
    throw new Error(`"${text}" is not HOST:PORT (e.g. 127.0.0.1:9091 or [::1]:9091)`);
  return { host: match[1] ?? match[2] ?? "", port };
}

export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

export class AdminServer {
  private readonly server: Server;
  private readonly stalls: LoopStallMonitor;
  private readonly processMetrics: ProcessMetrics;

  constructor(private readonly handlers: AdminHandlers) {
    this.stalls = new LoopStallMonitor(handlers.stallThresholdMs ?? 10_000);
    // Every process that has an admin endpoint reports its CPU, memory, fds, loop lag and GC.
    this.processMetrics = registerProcessMetrics(handlers.metrics);
    this.server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { allow: "GET, HEAD" }).end();
        return;
      }
      switch (path) {
        case "/healthz": {
          const stall = this.stalls.recentStall();
          if (stall === null) {
            res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
          } else {
            res
              .writeHead(503, { "content-type": "text/plain" })
              .end(
                `event loop stalled for ${(stall.durationMs / 1000).toFixed(1)} s until ${new Date(stall.endedAt).toISOString()}\n`,
              );
          }
          return;
        }
        case "/readyz": {
          const reason = this.handlers.notReadyReason();
          res
            .writeHead(reason === null ? 200 : 503, { "content-type": "text/plain" })
            .end(`${reason ?? "ready"}\n`);
          return;
        }
        case "/metrics": {
          const own = this.handlers.metrics.render();
          const gather = this.handlers.gatherMetrics;
          if (gather === undefined) {
            res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(own);
            return;
          }
          gather(own).then(
            (text) =>
              res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(text),
            (error: unknown) =>
              res.writeHead(500, { "content-type": "text/plain" }).end(`${(error as Error).message}\n`),
          );
          return;
        }
        case "/status": {
          const status = this.handlers.status;
          if (status === undefined) break;
          Promise.resolve()
            .then(status)
            .then(
              (value) =>
                res
                  .writeHead(200, { "content-type": "application/json" })
                  .end(`${JSON.stringify(value, null, 2)}\n`),
              (error: unknown) =>
                res.writeHead(500, { "content-type": "text/plain" }).end(`${(error as Error).message}\n`),
            );
          return;
        }
      }
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    });
  }

  async listen(address: HostPort): Promise<HostPort> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(address.port, address.host, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    this.stalls.start();
    const bound = this.server.address() as AddressInfo;
    return { host: bound.address, port: bound.port };
  }

  async close(): Promise<void> {
    this.stalls.stop();
    this.processMetrics.stop();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
