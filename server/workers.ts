// `osm-cert server --workers N`: N processes serve the signing port behind one listening address
// (node:cluster; the primary accepts and hands connections out round-robin), so one replica uses
// every core it is given and stays stateless: each worker is what a replica is (its own serving
// certificate, Tresor key, caches), and any worker can answer any call.
//
// The primary serves no gRPC. It opens the provider first (so a new Tresor root is made once,
// before any worker reads it), does the one-per-replica work (leader election and the trust-bundle
// ConfigMaps), and serves the admin endpoint: /metrics merges its own exposition with every
// worker's (labelled worker="…", exposition-merge.ts), /status sums the agents the workers see,
// /readyz fails until every worker listens and while one is missing. A worker that dies is
// replaced. SIGTERM to the primary stops every worker (they end their calls as a single process
// does) and the primary exits when all are gone; a worker whose primary vanished exits by itself.

import cluster, { type Worker } from "node:cluster";
import { once } from "node:events";
import { AdminServer, parseHostPort } from "../common/admin-http.js";
import { waitForSignal } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import { MetricsRegistry } from "../common/metrics.js";
import type { AgentSummary } from "./agent-registry.js";
import { AgentRegistry } from "./agent-registry.js";
import { mergeExpositions } from "./exposition-merge.js";
import {
  AGENTS_LISTED,
  checkServerFlags,
  openKubeClient,
  openProvider,
  rotationStatus,
  type ServerFlags,
  startServer,
  startTrustBundleDistribution,
  type WorkerSnapshot,
} from "./main.js";

/** Messages between the primary and its workers (over cluster's IPC channel). */
type ToWorker = { readonly osmCert: "snapshot"; readonly id: number };
type FromWorker =
  | { readonly osmCert: "listening"; readonly address: string }
  | { readonly osmCert: "snapshot"; readonly id: number; readonly snapshot: WorkerSnapshot };

/** A worker's snapshot not back by then is left out of that scrape (a busy worker is slow, not gone). */
const SNAPSHOT_TIMEOUT_MS = 2_000;
/** Workers get this long after SIGTERM (their own grace is 1.5 s, plus 0.5 s to exit); then SIGKILL. */
const WORKER_STOP_MS = 5_000;
/** A worker that died is replaced after this, doubling while they keep dying young, up to 30 s. */
const RESTART_BASE_MS = 500;
const RESTART_CAP_MS = 30_000;
/** A worker that lived this long resets the restart delay. */
const HEALTHY_AFTER_MS = 60_000;

function isFromWorker(message: unknown): message is FromWorker {
  return typeof message === "object" && message !== null && "osmCert" in message;
}

export async function runWorker(flags: ServerFlags, logger: Logger): Promise<void> {
  const id = cluster.worker?.id ?? 0;
  const log = logger.child({ worker: id });
  const running = await startServer(flags, log, { worker: true });
  const send = (message: FromWorker) => {
    if (process.connected) process.send?.(message);
  };
  process.on("message", (message: ToWorker) => {
    if (message?.osmCert === "snapshot")
      send({ osmCert: "snapshot", id: message.id, snapshot: running.snapshot() });
  });
  send({ osmCert: "listening", address: running.address });
  // SIGTERM (from the primary, or the whole process group), or the primary gone.
  await Promise.race([waitForSignal(log), once(process, "disconnect")]);
  // Ctrl-C reaches the whole process group, then the primary's SIGTERM follows: one close is enough.
  const ignore = () => {};
  process.on("SIGTERM", ignore).on("SIGINT", ignore);
  await running.close();
  log.info({ event: "server.worker_stopped" }, "signing worker stopped");
  setTimeout(() => process.exit(0), 500).unref();
}

export async function runPrimary(flags: ServerFlags, logger: Logger, count: number): Promise<void> {
  checkServerFlags(flags);
  const metrics = new MetricsRegistry();
  const kube = await openKubeClient(flags, logger);
  const provider = await openProvider(flags, logger, kube);
  const startedAt = new Date();
  const workerGauge = metrics.gauge("osm_cert_server_workers", "Worker processes serving the signing port.");
  const restarts = metrics
    .counter("osm_cert_server_worker_restarts_total", "Worker processes replaced after they died.")
    .zero();

  let stopping = false;
  const listening = new Map<number, Worker>();
  let address = "";
  let restartDelay = RESTART_BASE_MS;
  let failStart: ((error: Error) => void) | null = null;
  const allListening = new Promise<void>((resolve, reject) => {
    failStart = reject;
    const onMessage = (worker: Worker, message: unknown) => {
      if (!isFromWorker(message) || message.osmCert !== "listening") return;
      address = message.address;
      listening.set(worker.id, worker);
      workerGauge.set(listening.size);
      if (listening.size === count) {
        failStart = null;
        resolve();
      }
    };
    cluster.on("message", onMessage);
  });

  const fork = (): Worker => {
    const worker = cluster.fork();
    const born = Date.now();
    worker.once("exit", (code, signal) => {
      listening.delete(worker.id);
      workerGauge.set(listening.size);
      if (stopping) return;
      if (failStart !== null) {
        failStart(new Error(`worker ${worker.id} exited during start-up (code ${code}, signal ${signal})`));
        return;
      }
      logger.error(
        { event: "server.worker_died", worker: worker.id, pid: worker.process.pid, code, signal },
        "a signing worker died; starting another",
      );
      restartDelay = Date.now() - born > HEALTHY_AFTER_MS ? RESTART_BASE_MS : restartDelay;
      setTimeout(() => {
        if (stopping) return;
        restarts.inc();
        fork();
      }, restartDelay).unref();
      restartDelay = Math.min(RESTART_CAP_MS, restartDelay * 2);
    });
    return worker;
  };

  const stopWorkers = async (): Promise<void> => {
    stopping = true;
    const alive = Object.values(cluster.workers ?? {}).filter(
      (w): w is Worker => w !== undefined && !w.isDead(),
    );
    await Promise.all(
      alive.map(async (worker) => {
        const exited = once(worker, "exit");
        worker.process.kill("SIGTERM");
        const timer = setTimeout(() => worker.process.kill("SIGKILL"), WORKER_STOP_MS);
        await exited;
        clearTimeout(timer);
      }),
    );
  };

  for (let i = 0; i < count; i++) fork();
  try {
    await allListening;
  } catch (error) {
    await stopWorkers();
    await provider.close();
    await kube?.close();
    throw error;
  }

  let nextId = 0;
  const pending = new Map<number, (snapshot: WorkerSnapshot) => void>();
  cluster.on("message", (_worker, message: unknown) => {
    if (isFromWorker(message) && message.osmCert === "snapshot") pending.get(message.id)?.(message.snapshot);
  });
  /** Every listening worker's snapshot, by worker id; a worker that does not answer in time is left out. */
  const snapshots = (): Promise<Map<number, WorkerSnapshot>> =>
    Promise.all(
      [...listening.values()].map(
        (worker) =>
          new Promise<[number, WorkerSnapshot | null]>((resolve) => {
            const id = nextId++;
            const timer = setTimeout(() => {
              pending.delete(id);
              resolve([worker.id, null]);
            }, SNAPSHOT_TIMEOUT_MS);
            pending.set(id, (snapshot) => {
              clearTimeout(timer);
              pending.delete(id);
              resolve([worker.id, snapshot]);
            });
            try {
              worker.send({ osmCert: "snapshot", id } satisfies ToWorker);
            } catch {
              clearTimeout(timer);
              pending.delete(id);
              resolve([worker.id, null]);
            }
          }),
      ),
    ).then((pairs) => new Map(pairs.filter((p): p is [number, WorkerSnapshot] => p[1] !== null)));

  const stopLeading = startTrustBundleDistribution(flags, kube, provider, logger, metrics);
  // rotationStatus wants a registry; the primary has no agents of its own (it serves no gRPC).
  const noAgents = new AgentRegistry(new MetricsRegistry());
  const admin = new AdminServer({
    metrics,
    notReadyReason: () =>
      stopping
        ? "shutting down"
        : listening.size < count
          ? `${listening.size} of ${count} workers listening`
          : null,
    stallThresholdMs: flags["liveness-stall-threshold"],
    gatherMetrics: async (own) => {
      const byWorker = await snapshots();
      return mergeExpositions([
        { worker: "primary", text: own },
        ...[...byWorker].map(([id, s]) => ({ worker: String(id), text: s.metrics })),
      ]);
    },
    status: async () => {
      const status = rotationStatus(provider, noAgents, flags, startedAt);
      const byVersion: Record<string, number> = {};
      const notOnCurrent: AgentSummary[] = [];
      for (const snapshot of (await snapshots()).values()) {
        for (const [version, n] of Object.entries(snapshot.agents.byVersion)) {
          byVersion[version] = (byVersion[version] ?? 0) + n;
        }
        notOnCurrent.push(...snapshot.agents.notOnCurrent);
      }
      return {
        ...status,
        workers: listening.size,
        agents: { byVersion, notOnCurrent: notOnCurrent.slice(0, AGENTS_LISTED) },
      };
    },
  });
  const adminBound = await admin.listen(parseHostPort(flags["admin-listen"]));
  const adminAddress = `${adminBound.host}:${adminBound.port}`;
  logger.info(
    {
      event: "server.started",
      address,
      admin: adminAddress,
      provider: provider.name,
      trustDomain: flags["trust-domain"],
      workers: count,
      workerPids: [...listening.values()].map((w) => w.process.pid),
    },
    "signing server listening",
  );

  await waitForSignal(logger);
  await stopLeading();
  await stopWorkers();
  await admin.close();
  await provider.close();
  await kube?.close();
  logger.info({ event: "server.stopped" }, "signing server stopped");
  setTimeout(() => process.exit(0), 500).unref();
}
