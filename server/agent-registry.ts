// Which trust bundle each connected agent serves (issue 9, phase 2 of a root rotation). An agent is
// known while it holds a WatchTrustBundle stream; it reports the bundle version it adopted with
// ReportTrustBundle. Keys are (caller identity, agent id), so one workload cannot report for another.
// Agents that never report (older versions) stay "unreported" and show up as stragglers.

import type { Gauge, MetricsRegistry } from "../common/metrics.js";

export const UNREPORTED = "unreported";

interface AgentEntry {
  readonly identity: string;
  readonly pod: string | null;
  version: string | null;
  watches: number;
}

export interface AgentSummary {
  readonly identity: string;
  readonly pod: string | null;
  readonly version: string;
}

export class AgentRegistry {
  private readonly agents = new Map<string, AgentEntry>();
  private readonly onBundle: Gauge;
  private anonymous = 0;

  constructor(metrics: MetricsRegistry) {
    this.onBundle = metrics.gauge(
      "osm_cert_server_agents_on_bundle",
      'Agents with an open WatchTrustBundle stream, by the bundle version they reported ("unreported" until they do).',
    );
  }

  /** Registers an open watch stream; returns the function to call when it ends. */
  open(agentId: string, identity: string, pod: string | null): () => void {
    // Agents without an id (older ones) are each their own entry.
    const key = `${identity}\u0000${agentId === "" ? `anonymous-${++this.anonymous}` : agentId}`;
    let entry = this.agents.get(key);
    if (entry === undefined) {
      entry = { identity, pod, version: null, watches: 0 };
      this.agents.set(key, entry);
      this.onBundle.inc({ version: UNREPORTED });
    }
    entry.watches += 1;
    const held = entry;
    let closed = false;
    return () => {
      if (closed) return;
      closed = true;
      held.watches -= 1;
      if (held.watches === 0) {
        this.agents.delete(key);
        this.onBundle.dec({ version: held.version ?? UNREPORTED });
      }
    };
  }

  /** Records a report; false when this caller holds no watch with that agent id. */
  report(agentId: string, identity: string, version: string): boolean {
    const entry = agentId === "" ? undefined : this.agents.get(`${identity}\u0000${agentId}`);
    if (entry === undefined) return false;
    if (entry.version !== version) {
      this.onBundle.dec({ version: entry.version ?? UNREPORTED });
      this.onBundle.inc({ version });
      entry.version = version;
    }
    return true;
  }

  /** Agents per reported version. */
  counts(): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const entry of this.agents.values()) {
      const version = entry.version ?? UNREPORTED;
      counts[version] = (counts[version] ?? 0) + 1;
    }
    return counts;
  }

  /** Up to `limit` agents that do not report `version`. */
  notOn(version: string, limit: number): AgentSummary[] {
    const out: AgentSummary[] = [];
    for (const entry of this.agents.values()) {
      if (out.length >= limit) break;
      if (entry.version !== version)
        out.push({ identity: entry.identity, pod: entry.pod, version: entry.version ?? UNREPORTED });
    }
    return out;
  }
}
