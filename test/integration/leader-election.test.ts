// Leader election over a Lease in the fake API server, over real HTTPS, with short durations
// (lease 1 s, renew deadline 700 ms, retry 200 ms): one leader among candidates; a clean hand-over
// takes one retry, a dead leader's Lease is taken only after it expires (judged by the follower's
// own clock), a leader that cannot renew steps down before anyone else may lead, and Conflicts are
// answered by reading again. Leaders' work never overlaps in any of it.

import assert from "node:assert/strict";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { test } from "node:test";
import type { Logger } from "../../common/logger.js";
import { MetricsRegistry } from "../../common/metrics.js";
import { KubeClient, LEASES, type Lease, StaticToken } from "../../server/kubernetes/client.js";
import {
  DEFAULT_LEADER_LEASE_NAME,
  type ElectionClock,
  LeaderElector,
  type LeaderElectorOptions,
  microTime,
} from "../../server/kubernetes/leader-election.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { type CapturedLog, captureLog } from "../helpers/log-capture.js";

const NS = "osm-system";
const LEASE_SECONDS = 1;
const TIMING = { leaseDurationSeconds: LEASE_SECONDS, renewDeadlineMs: 700, retryPeriodMs: 200 } as const;
const MICRO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

interface Cluster {
  readonly fake: FakeKubeApiServer;
  /** A client authenticated as ServiceAccount `user` (so RBAC denials can target one replica). */
  client(user: string): KubeClient;
  /** Candidates started so far; all stopped at the end. */
  readonly candidates: Candidate[];
  /** Work of all leaders, to prove it never overlaps. */
  readonly work: { active: number; maxActive: number; log: string[] };
}

interface Candidate {
  readonly name: string;
  readonly username: string;
  readonly elector: LeaderElector;
  readonly metrics: MetricsRegistry;
  readonly log: CapturedLog;
  /** Wall-clock times (Date.now) of the callbacks. */
  readonly startedAt: number[];
  readonly stoppedAt: number[];
  stop(): Promise<void>;
}

async function withCluster(run: (cluster: Cluster) => Promise<void>): Promise<void> {
  const fake = await FakeKubeApiServer.start({ namespaces: [NS] });
  const clients: KubeClient[] = [];
  const cluster: Cluster = {
    fake,
    client(user) {
      const client = new KubeClient({
        config: {
          server: fake.url,
          caPem: fake.caPem,
          token: new StaticToken(fake.serviceAccountToken(NS, user), "test"),
          namespace: NS,
          source: "test",
        },
        retry: { baseDelayMs: 10, maxDelayMs: 40 },
      });
      clients.push(client);
      return client;
    },
    candidates: [],
    work: { active: 0, maxActive: 0, log: [] },
  };
  try {
    await run(cluster);
  } finally {
    await Promise.all(cluster.candidates.map((c) => c.stop()));
    await Promise.all(clients.map((c) => c.close()));
    await fake.close();
  }
}

function candidate(
  cluster: Cluster,
  name: string,
  options: Partial<Omit<LeaderElectorOptions, "client" | "logger" | "metrics">> = {},
): Candidate {
  const controller = new AbortController();
  const metrics = new MetricsRegistry();
  const log = captureLog(name);
  const startedAt: number[] = [];
  const stoppedAt: number[] = [];
  const { work } = cluster;
  const elector = new LeaderElector({
    client: cluster.client(name),
    namespace: NS,
    identity: name,
    logger: log.logger,
    metrics,
    ...TIMING,
    onStartedLeading: (signal) => {
      startedAt.push(Date.now());
      work.active++;
      work.maxActive = Math.max(work.maxActive, work.active);
      work.log.push(`${name} started`);
      return new Promise<void>((resolve) =>
        signal.addEventListener(
          "abort",
          () => {
            work.active--;
            work.log.push(`${name} finished`);
            resolve();
          },
          { once: true },
        ),
      );
    },
    onStoppedLeading: () => {
      stoppedAt.push(Date.now());
    },
    ...options,
  });
  const running = elector.run(controller.signal);
  let stopped: Promise<void> | undefined;
  const entry: Candidate = {
    name,
    username: FakeKubeApiServer.serviceAccountUser(NS, name).username,
    elector,
    metrics,
    log,
    startedAt,
    stoppedAt,
    stop() {
      controller.abort();
      stopped ??= running;
      return stopped;
    },
  };
  cluster.candidates.push(entry);
  return entry;
}

async function eventually<T>(
  what: string,
  check: () => T | undefined | false | null,
  timeoutMs = 5_000,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined && value !== false && value !== null) return value;
    if (performance.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function leaseOf(fake: FakeKubeApiServer): Lease | undefined {
  return fake.object("leases", NS, DEFAULT_LEADER_LEASE_NAME) as Lease | undefined;
}

function metric(registry: MetricsRegistry, series: string): number | undefined {
  const line = registry
    .render()
    .split("\n")
    .find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

function leaders(candidates: readonly Candidate[]): string[] {
  return candidates.filter((c) => c.elector.isLeader).map((c) => c.name);
}

/** Samples every few ms that no two candidates think they lead at once. */
function exclusivityMonitor(candidates: readonly Candidate[]): { stop(): number } {
  let max = 0;
  const timer = setInterval(() => {
    max = Math.max(max, leaders(candidates).length);
  }, 5);
  return {
    stop() {
      clearInterval(timer);
      return max;
    },
  };
}

test("of three candidates starting together exactly one leads, and keeps renewing", async () => {
  await withCluster(async (cluster) => {
    const { fake } = cluster;
    const all = ["replica-a", "replica-b", "replica-c"].map((name) => candidate(cluster, name));
    const monitor = exclusivityMonitor(all);

    const leader = await eventually("a leader", () => all.find((c) => c.elector.isLeader));
    const first = leaseOf(fake);
    // Three more renewals by the same leader: leadership is stable, not merely reached.
    await eventually("three renewals", () => {
      const lease = leaseOf(fake);
      return (
        lease?.spec?.holderIdentity === leader.name &&
        Number(lease.metadata?.resourceVersion) >= Number(first?.metadata?.resourceVersion) + 3
      );
    });

    assert.equal(monitor.stop(), 1, "never two leaders at once");
    assert.deepEqual(leaders(all), [leader.name]);
    assert.equal(cluster.work.maxActive, 1);
    assert.equal(fake.count({ verb: "create", resource: "leases", status: 201 }), 1, "one create won");
    for (const other of all.filter((c) => c !== leader)) {
      assert.equal(other.elector.leader, leader.name, `${other.name} knows who leads`);
      assert.equal(other.startedAt.length, 0);
      assert.equal(metric(other.metrics, "osm_cert_server_leader"), 0);
    }
    assert.equal(metric(leader.metrics, "osm_cert_server_leader"), 1);

    const lease = leaseOf(fake);
    assert.equal(lease?.spec?.leaseDurationSeconds, LEASE_SECONDS);
    assert.equal(lease?.spec?.leaseTransitions, 0);
    assert.match(lease?.spec?.renewTime ?? "", MICRO_TIME);
    assert.match(lease?.spec?.acquireTime ?? "", MICRO_TIME);
    assert.equal(lease?.spec?.acquireTime, first?.spec?.acquireTime, "renewals keep acquireTime");
    assert.ok(lease?.spec?.renewTime !== first?.spec?.renewTime, "renewals move renewTime");
  });
});

test("a leader that stops releases the Lease and another takes over within a retry period", async () => {
  await withCluster(async (cluster) => {
    const a = candidate(cluster, "replica-a");
    await eventually("a leads", () => a.elector.isLeader);
    const b = candidate(cluster, "replica-b");
    await eventually("b sees a lead", () => b.elector.leader === "replica-a");
    const monitor = exclusivityMonitor([a, b]);

    await a.stop();
    const stoppedAt = performance.now();
    assert.equal(a.log.lines.filter((l) => l.event === "leader.released").length, 1);
    await eventually("b leads", () => b.elector.isLeader);
    const handover = performance.now() - stoppedAt;

    // Waiting for expiry would take at least the lease duration less one retry period.
    assert.ok(handover < LEASE_SECONDS * 1000 - 200, `hand-over took ${Math.round(handover)} ms`);
    assert.ok(monitor.stop() <= 1, "never two leaders at once");
    assert.deepEqual(cluster.work.log, ["replica-a started", "replica-a finished", "replica-b started"]);
    assert.ok((a.stoppedAt[0] ?? Infinity) <= (b.startedAt[0] ?? 0), "a stopped before b started");
    assert.equal(metric(a.metrics, "osm_cert_server_leader"), 0);
    const lease = leaseOf(cluster.fake);
    assert.equal(lease?.spec?.holderIdentity, "replica-b");
    assert.equal(lease?.spec?.leaseTransitions, 1);
  });
});

test("a leader that dies without releasing is replaced only after its lease expires", async () => {
  await withCluster(async (cluster) => {
    const a = candidate(cluster, "replica-a", { releaseOnCancel: false });
    await eventually("a leads", () => a.elector.isLeader);
    const b = candidate(cluster, "replica-b");
    await eventually("b sees a lead", () => b.elector.leader === "replica-a");

    await a.stop();
    const last = leaseOf(cluster.fake);
    assert.equal(last?.spec?.holderIdentity, "replica-a", "nothing was released");
    const lastRenew = Date.parse(last?.spec?.renewTime ?? "");
    assert.equal(a.log.lines.filter((l) => l.event === "leader.released").length, 0);

    await eventually("b leads", () => b.elector.isLeader, 5_000);
    const takeover = b.startedAt[0] ?? 0;
    // b saw that renewal no earlier than it was written, and waits a full lease from then.
    assert.ok(
      takeover - lastRenew >= LEASE_SECONDS * 1000,
      `took over ${takeover - lastRenew} ms after the last renewal`,
    );
    assert.ok(takeover - lastRenew < LEASE_SECONDS * 1000 + 1_500, "and not much later");
    assert.equal(cluster.work.maxActive, 1);
    const lease = leaseOf(cluster.fake);
    assert.equal(lease?.spec?.holderIdentity, "replica-b");
    assert.equal(lease?.spec?.leaseTransitions, 1);
  });
});

test("Conflicts: a foreign write is re-read and renewed over; a Lease taken by another makes the leader step down", async () => {
  await withCluster(async (cluster) => {
    const { fake } = cluster;
    const admin = cluster.client("admin");
    const a = candidate(cluster, "replica-a");
    await eventually("a leads", () => a.elector.isLeader);

    // Someone annotates the Lease: a's cached copy is stale, its next renewal gets 409, it reads
    // again, finds itself the holder, and renews. No step-down.
    await admin.patch(
      LEASES,
      DEFAULT_LEADER_LEASE_NAME,
      { metadata: { annotations: { note: "hello" } } },
      { namespace: NS },
    );
    const annotated = Number(leaseOf(fake)?.metadata?.resourceVersion);
    await eventually("a renews after the conflict", () => {
      const lease = leaseOf(fake);
      return (
        Number(lease?.metadata?.resourceVersion) > annotated && lease?.spec?.holderIdentity === "replica-a"
      );
    });
    assert.ok(fake.count({ verb: "update", resource: "leases", status: 409, user: a.username }) >= 1);
    assert.equal(leaseOf(fake)?.metadata?.annotations?.note, "hello", "the foreign change survives");
    assert.equal(a.stoppedAt.length, 0, "a conflict alone is no reason to step down");
    assert.ok(a.elector.isLeader);

    // Another identity takes the Lease outright (a fresh renewTime, so it is not expired).
    const current = await admin.get(LEASES, DEFAULT_LEADER_LEASE_NAME, { namespace: NS });
    const takenAt = Date.now();
    await admin.update(LEASES, {
      ...current,
      spec: {
        ...current.spec,
        holderIdentity: "intruder",
        renewTime: microTime(takenAt),
        acquireTime: microTime(takenAt),
      },
    });
    await eventually("a steps down", () => a.stoppedAt.length === 1);
    assert.equal(a.elector.isLeader, false);
    assert.equal(a.elector.leader, "intruder");
    assert.equal(metric(a.metrics, "osm_cert_server_leader"), 0);
    assert.equal(
      a.log.lines.filter((l) => l.event === "leader.lost" && l.reason === "taken").length,
      1,
      "one line says why",
    );

    // The intruder never renews: a takes the Lease back once it expires, not before.
    await eventually("a leads again", () => a.startedAt.length === 2);
    assert.ok((a.startedAt[1] ?? 0) - takenAt >= LEASE_SECONDS * 1000);
    const lease = leaseOf(fake);
    assert.equal(lease?.spec?.holderIdentity, "replica-a");
    assert.equal(
      lease?.spec?.leaseTransitions,
      1,
      "the intruder did not count its own transition; a counts its",
    );
  });
});

test("a leader that cannot renew steps down within the renew deadline, before anyone may take over", async () => {
  await withCluster(async (cluster) => {
    const { fake } = cluster;
    const a = candidate(cluster, "replica-a");
    await eventually("a leads", () => a.elector.isLeader);
    const b = candidate(cluster, "replica-b");
    await eventually("b sees a lead", () => b.elector.leader === "replica-a");
    const monitor = exclusivityMonitor([a, b]);

    // Elector, fake API server and test share this event loop: a stall delays everything in it.
    const stalls = monitorEventLoopDelay({ resolution: 10 });
    stalls.enable();
    const allow = fake.deny({ verb: "update", resource: "leases", user: a.username });
    await eventually("a steps down", () => a.stoppedAt.length === 1, 3_000);
    stalls.disable();
    const lastRenew = Date.parse(leaseOf(fake)?.spec?.renewTime ?? "");
    const steppedDown = (a.stoppedAt[0] ?? 0) - lastRenew;
    // The elector counts its deadline from the moment its last successful attempt began, a little
    // before that attempt stamped renewTime: it steps down up to one attempt's latency less than
    // renewDeadline after renewTime. An attempt takes well under a retry period here, unless the
    // event loop stalled in between (a loaded machine: seen 221 ms after renewTime at load 9–30).
    const longestStallMs = stalls.max / 1e6;
    assert.ok(
      steppedDown >= TIMING.renewDeadlineMs - TIMING.retryPeriodMs - longestStallMs,
      `stepped down ${steppedDown} ms after renewing (longest event-loop stall ${longestStallMs.toFixed(0)} ms)`,
    );
    assert.ok(steppedDown < LEASE_SECONDS * 1000, "before the lease expired");

    await eventually("b leads", () => b.elector.isLeader);
    assert.ok((b.startedAt[0] ?? 0) - lastRenew >= LEASE_SECONDS * 1000, "b waited for expiry");
    assert.equal(monitor.stop(), 1);
    assert.equal(cluster.work.maxActive, 1);

    const denials = a.log.lines.filter((l) => Number(l.level) >= 50);
    assert.equal(denials.length, 1, "one line for the RBAC denial, however often it recurs");
    assert.equal(denials[0]?.verb, "update");
    assert.equal(denials[0]?.resource, "leases.coordination.k8s.io");
    assert.match(String(denials[0]?.msg), /cannot update leases .*grant "update" on "leases"/);
    assert.ok(fake.count({ verb: "update", resource: "leases", status: 403, user: a.username }) >= 2);
    allow();
  });
});

test("a deleted Lease is created again by the leader, which keeps leading", async () => {
  await withCluster(async (cluster) => {
    const admin = cluster.client("admin");
    const a = candidate(cluster, "replica-a");
    await eventually("a leads", () => a.elector.isLeader);
    const uid = leaseOf(cluster.fake)?.metadata?.uid;
    await admin.delete(LEASES, DEFAULT_LEADER_LEASE_NAME, { namespace: NS });
    await eventually("a new Lease held by a", () => {
      const lease = leaseOf(cluster.fake);
      return lease !== undefined && lease.metadata?.uid !== uid && lease.spec?.holderIdentity === "replica-a";
    });
    assert.equal(a.stoppedAt.length, 0);
  });
});

/** Time that moves only when the test says so; sleepers wake when their moment is reached. */
class ManualClock implements ElectionClock {
  private elapsed = 0;
  readonly sleepers = new Set<{ until: number; wake: () => void }>();
  constructor(private readonly epochMs: number) {}
  now(): number {
    return this.epochMs + this.elapsed;
  }
  monotonic(): number {
    return this.elapsed;
  }
  sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const sleeper = {
        until: this.elapsed + ms,
        wake: () => {
          this.sleepers.delete(sleeper);
          signal.removeEventListener("abort", sleeper.wake);
          resolve();
        },
      };
      this.sleepers.add(sleeper);
      signal.addEventListener("abort", sleeper.wake, { once: true });
    });
  }
  advance(ms: number): void {
    this.elapsed += ms;
    for (const sleeper of [...this.sleepers]) if (sleeper.until <= this.elapsed) sleeper.wake();
  }
}

test("expiry is judged by the follower's clock from when it saw the record, never by the remote renewTime", async () => {
  for (const remote of ["2001-01-01T00:00:00.000000Z", "2100-01-01T00:00:00.000000Z"]) {
    await withCluster(async (cluster) => {
      const { fake } = cluster;
      fake.seed("leases", {
        metadata: { name: DEFAULT_LEADER_LEASE_NAME, namespace: NS },
        spec: {
          holderIdentity: "ghost",
          leaseDurationSeconds: LEASE_SECONDS,
          acquireTime: remote,
          renewTime: remote,
          leaseTransitions: 4,
        },
      });
      const clock = new ManualClock(Date.UTC(2026, 0, 1));
      const b = candidate(cluster, "replica-b", { clock, random: () => 0 });
      const reads = () => fake.count({ verb: "get", resource: "leases", user: b.username });

      // b reads at 0, 200, 400, 600, 800 ms of its own time: the ghost's lease is still valid.
      for (let at = 0; at < LEASE_SECONDS * 1000; at += TIMING.retryPeriodMs) {
        const read = at / TIMING.retryPeriodMs + 1;
        await eventually(`read ${read} done, b asleep`, () => reads() === read && clock.sleepers.size === 1);
        assert.equal(b.elector.isLeader, false, `${remote}: not leader at ${at} ms`);
        assert.equal(b.elector.leader, "ghost");
        clock.advance(TIMING.retryPeriodMs);
      }
      // At 1000 ms a full lease has passed since b first saw this record.
      await eventually(`${remote}: b leads at 1000 ms`, () => b.elector.isLeader);
      const lease = leaseOf(fake);
      assert.equal(lease?.spec?.holderIdentity, "replica-b");
      assert.equal(lease?.spec?.renewTime, "2026-01-01T00:00:01.000000Z");
      assert.equal(lease?.spec?.acquireTime, "2026-01-01T00:00:01.000000Z");
      assert.equal(lease?.spec?.leaseTransitions, 5);
    });
  }
});

test("timings that could let two replicas lead at once are refused", () => {
  const base = {
    client: {} as KubeClient,
    namespace: NS,
    logger: captureLog().logger as Logger,
  };
  const make = (timing: Partial<LeaderElectorOptions>) => () =>
    new LeaderElector({ ...base, metrics: new MetricsRegistry(), ...timing });
  assert.throws(
    make({ leaseDurationSeconds: 10, renewDeadlineMs: 10_000 }),
    /shorter than the lease duration/,
  );
  assert.throws(make({ renewDeadlineMs: 2_000, retryPeriodMs: 2_000 }), /must exceed 1.2 × retryPeriod/);
  assert.throws(make({ leaseDurationSeconds: 1.5 }), /whole number/);
  assert.doesNotThrow(make({}));
  assert.match(microTime(Date.UTC(2026, 0, 1)), /^2026-01-01T00:00:00\.000000Z$/);
});
