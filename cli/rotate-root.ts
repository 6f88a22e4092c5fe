// `osm-cert rotate-root`: the operator's command for a zero-downtime root rotation (issue 9). It
// drives the phases in server/rotation/root-rotation.ts against the CA directory (or, in Kubernetes
// mode, the CA bundle Secret and its rotation Secret in the OSM namespace) and asks each
// signing server's admin endpoint (--server, its --admin-listen address) which bundle its agents
// serve. Output is one human line per step on stdout; state lives with the root, so rerunning
// resumes, and a finished rotation is not redone.

import { X509Certificate } from "node:crypto";
import { formatDuration } from "../common/duration.js";
import { FlagError, type FlagTable, type ParsedFlags, parseFlags, readFlagFile } from "../common/flags.js";
import { type KeyAlgorithm, parseKeyAlgorithm } from "../common/keys.js";
import { KubeClient, loadKubeconfig } from "../server/kubernetes/client.js";
import type { CaMaterial } from "../server/providers/tresor/ca-material.js";
import { DirectoryCaStore } from "../server/providers/tresor/directory-store.js";
import type { RotationState } from "../server/providers/tresor/rotation-state.js";
import type { RotationStore } from "../server/providers/tresor/rotation-store.js";
import { rootRoles, SecretRotationStore } from "../server/providers/tresor/secret-rotation-store.js";
import {
  DEFAULT_CA_BUNDLE_SECRET_NAME,
  DEFAULT_OSM_NAMESPACE,
  SecretCaStore,
} from "../server/providers/tresor/secret-store.js";
import { ROTATION_POLL_MS } from "../server/providers/tresor/tresor.js";
import {
  RotationError,
  rollbackRotation,
  rotateRoot,
  type ServerProbe,
} from "../server/rotation/root-rotation.js";

const FLAGS = {
  "ca-dir": {
    kind: "string",
    help: "Tresor's CA directory (the server's --ca-dir); or Kubernetes mode with --kubeconfig",
  },
  kubeconfig: {
    kind: "string",
    help: "Kubernetes mode: the operator's kubeconfig; the root and the rotation state are Secrets in --osm-namespace",
    env: "KUBECONFIG",
  },
  "osm-namespace": {
    kind: "string",
    help: "Kubernetes mode: namespace of the OSM control plane",
    default: DEFAULT_OSM_NAMESPACE,
    env: "OSM_NAMESPACE",
  },
  "ca-bundle-secret-name": {
    kind: "string",
    help: "Kubernetes mode: the servers' CA bundle Secret (the rotation state is kept in <name>-rotation)",
    default: DEFAULT_CA_BUNDLE_SECRET_NAME,
    env: "OSM_CA_BUNDLE_SECRET_NAME",
  },
  status: {
    kind: "boolean",
    help: "print the phase, the roots and the agents per bundle, and change nothing",
  },
  rollback: { kind: "boolean", help: "return to the old root alone (only before phase 3)" },
  again: { kind: "boolean", help: "start another rotation after a finished or rolled-back one" },
  "new-root-cert": { kind: "string", help: "bring your own new root: its certificate (PEM)" },
  "new-root-key": { kind: "string", help: "bring your own new root: its private key (PEM)" },
  server: {
    kind: "list",
    help: "admin address (--admin-listen) of every signing server replica, HOST:PORT (repeat or comma-separate)",
    default: "",
    env: "OSM_CERT_ROTATE_ROOT_SERVERS",
  },
  "wait-agents": {
    kind: "duration",
    help: "phase 2: how long to wait for every agent to serve the new bundle",
    default: "10m",
  },
  "renew-window": {
    kind: "duration",
    help: "phase 3: agents renew at a random moment within this window",
    default: "5m",
  },
  "service-cert-validity-duration": {
    kind: "duration",
    help: "the servers' longest service-cert validity (phase 4 waits this long after phase 3; a larger value a server reports wins)",
    default: "24h",
    env: "OSM_SERVICE_CERT_VALIDITY_DURATION",
  },
  "agent-reconnect-grace": {
    kind: "duration",
    help: "phase 2: a server must have been up this long before its agent count is believed (agents reconnect with up to 30s backoff)",
    default: "35s",
  },
  "clock-skew": {
    kind: "duration",
    help: "phase 4: extra wait for peers whose clocks run behind",
    default: "30s",
  },
  "follow-lag": {
    kind: "duration",
    help: "how long a server may take to see a new state (its poll interval)",
    default: formatDuration(ROTATION_POLL_MS),
  },
  "ca-common-name": { kind: "string", help: "CN of a generated new root", default: "osm.root" },
  "ca-key-algorithm": {
    kind: "string",
    help: "key algorithm of a generated new root",
    default: "ecdsa-p256",
    validate: (v) => void parseKeyAlgorithm(v),
  },
  "ca-validity": { kind: "duration", help: "validity of a generated new root", default: "87600h" },
} as const satisfies FlagTable;

interface ServerStatus {
  startedAt?: string;
  trustBundle: { version: string };
  rotation: { signingFingerprint: string; phase: string | null } | null;
  maxServiceCertValidityMs?: number;
  agents: {
    byVersion: Record<string, number>;
    notOnCurrent: { identity: string; pod: string | null; version: string }[];
  };
}

async function fetchStatus(server: string): Promise<ServerStatus> {
  const response = await fetch(`http://${server}/status`, { signal: AbortSignal.timeout(5_000) });
  if (!response.ok) throw new Error(`${server}/status answered ${response.status}`);
  return (await response.json()) as ServerStatus;
}

/** Asks every replica's admin /status; an unreachable replica is a straggler, never a success. */
function serverProbe(servers: readonly string[], reconnectGraceMs: number): ServerProbe {
  const all = async () =>
    Promise.all(
      servers.map(async (server) => {
        try {
          return { server, status: await fetchStatus(server), error: null };
        } catch (error) {
          return { server, status: null, error: (error as Error).message };
        }
      }),
    );
  return {
    async agentsOn(version) {
      let on = 0;
      let off = 0;
      const stragglers: string[] = [];
      for (const { server, status, error } of await all()) {
        if (status === null) {
          stragglers.push(`server ${server} (${error})`);
          continue;
        }
        if (status.trustBundle.version !== version) {
          stragglers.push(`server ${server} (serves bundle ${status.trustBundle.version})`);
          continue;
        }
        // Agents of a replica that just (re)started may still be reconnecting: zero is not "all".
        const up = Date.now() - Date.parse(status.startedAt ?? "");
        if (!(up >= reconnectGraceMs)) {
          stragglers.push(
            `server ${server} (started ${Math.round(up / 1000)}s ago; agents may still be reconnecting)`,
          );
        }
        for (const [v, n] of Object.entries(status.agents.byVersion)) {
          if (v === version) on += n;
          else off += n;
        }
        for (const a of status.agents.notOnCurrent)
          stragglers.push(`${a.identity}${a.pod ? ` pod ${a.pod}` : ""} (${a.version})`);
      }
      return {
        done: stragglers.length === 0 && off === 0,
        summary: `${on} agent(s) on bundle ${version}, ${off} not yet`,
        stragglers,
      };
    },
    async signingWith(fingerprint) {
      const results = await all();
      const behind = results.filter((r) => r.status?.rotation?.signingFingerprint !== fingerprint);
      return {
        done: behind.length === 0,
        summary:
          behind.length === 0
            ? `all ${results.length} server(s) sign with the new root`
            : `server(s) not yet signing with the new root: ${behind.map((r) => r.server).join(", ")}`,
      };
    },
    async maxServiceCertValidityMs() {
      let max: number | null = null;
      for (const { status } of await all()) {
        const v = status?.maxServiceCertValidityMs;
        if (typeof v === "number" && (max === null || v > max)) max = v;
      }
      return max;
    },
  };
}

async function operatorRoot(flags: {
  "new-root-cert"?: string;
  "new-root-key"?: string;
}): Promise<CaMaterial | null> {
  const certFile = flags["new-root-cert"];
  const keyFile = flags["new-root-key"];
  if (certFile === undefined && keyFile === undefined) return null;
  if (certFile === undefined || keyFile === undefined) {
    throw new FlagError("rotate-root: give both --new-root-cert and --new-root-key, or neither");
  }
  const [caCert, privateKey] = await Promise.all([
    readFlagFile("new-root-cert", certFile),
    readFlagFile("new-root-key", keyFile),
  ]);
  let notAfter: Date;
  try {
    notAfter = new Date(new X509Certificate(caCert).validTo);
  } catch (error) {
    throw new RotationError(`--new-root-cert ${certFile}: ${(error as Error).message}`);
  }
  return { caCert, privateKey, expiration: notAfter.toISOString() };
}

async function printStatus(
  state: RotationState | null,
  store: CaStoreWithRotation,
  servers: readonly string[],
): Promise<void> {
  const out = (line: string) => process.stdout.write(`${line}\n`);
  if (state === null) {
    const plain = await store.load();
    out("phase: none (no rotation has started)");
    if (plain !== null) {
      const cert = new X509Certificate(plain.caCert);
      out(
        `root: ${cert.fingerprint256.replace(/:/g, "").toLowerCase()} expires ${new Date(cert.validTo).toISOString()} (signing, in bundle)`,
      );
    }
  } else {
    out(`phase: ${state.phase}`);
    const roles = rootRoles(state);
    for (const root of state.roots) {
      const marks = [
        root.id === state.signing ? "signing" : null,
        state.bundle.includes(root.id) ? "in bundle" : "not in bundle",
      ]
        .filter((m) => m !== null)
        .join(", ");
      out(
        `root ${root.role}: ${root.fingerprint} expires ${root.notAfter} (${marks}) role ${roles[root.id]}`,
      );
    }
    for (const [name, at] of Object.entries(state.timestamps)) out(`${name}: ${at}`);
    if (state.dropOldAfter !== null && state.phase === "signing-new")
      out(`old root leaves the bundle after: ${state.dropOldAfter}`);
    if (state.renew !== null)
      out(
        `renew order: certificates obtained before ${state.renew.before}, spread over ${formatDuration(state.renew.windowMs)}`,
      );
  }
  for (const server of servers) {
    try {
      const status = await fetchStatus(server);
      const counts = Object.entries(status.agents.byVersion)
        .map(([v, n]) => `${n} on ${v}`)
        .join(", ");
      out(`server ${server}: bundle ${status.trustBundle.version}; agents: ${counts || "none"}`);
    } catch (error) {
      out(`server ${server}: unreachable (${(error as Error).message})`);
    }
  }
}

interface CaStoreWithRotation {
  load(): Promise<CaMaterial | null>;
  readonly rotation: RotationStore;
}

/** The CA directory, or the CA bundle Secret and its rotation Secret (Kubernetes mode). */
async function openStore(flags: {
  "ca-dir"?: string;
  kubeconfig?: string;
  "osm-namespace": string;
  "ca-bundle-secret-name": string;
}): Promise<{ store: CaStoreWithRotation; close: () => Promise<void> }> {
  const dir = flags["ca-dir"];
  const kubeconfig = flags.kubeconfig;
  if (dir !== undefined) return { store: new DirectoryCaStore(dir), close: async () => {} };
  if (kubeconfig === undefined) {
    throw new FlagError("rotate-root: give --ca-dir DIR, or --kubeconfig FILE for Kubernetes mode");
  }
  const client = new KubeClient({
    config: await loadKubeconfig(kubeconfig),
    userAgent: "osm-cert-rotate-root",
  });
  const namespace = flags["osm-namespace"];
  const name = flags["ca-bundle-secret-name"];
  const rotation = new SecretRotationStore({ client, namespace, caBundleSecretName: name });
  const plain = new SecretCaStore({ client, namespace, name, rotation });
  return { store: { load: () => plain.load(), rotation }, close: () => client.close() };
}

export async function rotateRootCommand(argv: readonly string[]): Promise<void> {
  const flags = parseFlags("rotate-root", FLAGS, argv);
  const { store, close } = await openStore(flags);
  try {
    await rotateWith(flags, store);
  } finally {
    await close();
  }
}

async function rotateWith(flags: ParsedFlags<typeof FLAGS>, dir: CaStoreWithRotation): Promise<void> {
  const rotation = dir.rotation;
  const servers = flags.server.filter((s) => s !== "");
  if (flags.status) {
    await printStatus(await rotation.readState(), dir, servers);
    return;
  }
  const say = (line: string) => process.stdout.write(`rotate-root: ${line}\n`);
  if (flags.rollback) {
    await rollbackRotation({ rotation, say });
    return;
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once("SIGINT", onSignal).once("SIGTERM", onSignal);
  try {
    await rotateRoot({
      loadPlainRoot: () => dir.load(),
      rotation,
      newRoot: await operatorRoot(flags),
      rootOptions: {
        keyAlgorithm: flags["ca-key-algorithm"] as KeyAlgorithm,
        commonName: flags["ca-common-name"],
        validityMs: flags["ca-validity"],
      },
      probe: servers.length === 0 ? null : serverProbe(servers, flags["agent-reconnect-grace"]),
      waitAgentsMs: flags["wait-agents"],
      renewWindowMs: flags["renew-window"],
      maxServiceCertValidityMs: flags["service-cert-validity-duration"],
      clockSkewMs: flags["clock-skew"],
      followLagMs: flags["follow-lag"],
      again: flags.again,
      say,
      signal: stop.signal,
    });
  } catch (error) {
    if (stop.signal.aborted) {
      say("interrupted; the state is saved, rerun to resume");
      throw new RotationError("interrupted");
    }
    throw error;
  } finally {
    process.off("SIGINT", onSignal).off("SIGTERM", onSignal);
  }
}
