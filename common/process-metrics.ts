// The standard process and runtime metrics (process_*, nodejs_*) under the names Prometheus'
// client libraries use, so stock dashboards and alerts work. Computed at scrape time from what the
// runtime already tracks; the only ongoing cost is one event-loop delay monitor (a libuv timer at
// 20 ms resolution) and a GC observer, which the agent's footprint budget allows (DESIGN.md §12).

import { readdirSync, readFileSync } from "node:fs";
import {
  constants,
  type IntervalHistogram,
  monitorEventLoopDelay,
  PerformanceObserver,
} from "node:perf_hooks";
import { getHeapStatistics } from "node:v8";
import { Histogram, type Metric, type MetricsRegistry } from "./metrics.js";

const LOOP_RESOLUTION_MS = 20;
const GC_BUCKETS_SECONDS: readonly number[] = [0.001, 0.01, 0.1, 1, 2, 5];
const GC_KINDS: Readonly<Record<number, string>> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: "minor",
  [constants.NODE_PERFORMANCE_GC_MAJOR]: "major",
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb",
};

/** A family whose one unlabelled (or fixed-label) sample is read when scraped. */
class Sampled implements Metric {
  constructor(
    readonly name: string,
    private readonly help: string,
    private readonly type: "counter" | "gauge",
    private readonly sample: () => string,
  ) {}
  render(): string {
    return `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} ${this.type}\n${this.sample()}`;
  }
}

const line = (name: string, value: number, labels = ""): string =>
  `${name}${labels === "" ? "" : `{${labels}}`} ${Number.isFinite(value) ? value : 0}\n`;

/** Open file descriptors; 0 where /proc is not there (the gauge stays, see metrics.ts). */
function openFds(): number {
  try {
    // The listing holds the descriptor readdir itself opened.
    return readdirSync("/proc/self/fd").length - 1;
  } catch {
    return 0;
  }
}

function maxFds(): number {
  try {
    const limits = readFileSync("/proc/self/limits", "utf8");
    const soft = /^Max open files\s+(\S+)/m.exec(limits)?.[1];
    return soft === undefined || soft === "unlimited" ? 0 : Number(soft);
  } catch {
    return 0;
  }
}

export interface ProcessMetrics {
  /** Stops the event-loop monitor and the GC observer. */
  stop(): void;
}

export function registerProcessMetrics(registry: MetricsRegistry): ProcessMetrics {
  const startTime = Math.round(Date.now() / 1000 - process.uptime());
  const cpu = (pick: (u: NodeJS.CpuUsage) => number) => () => pick(process.cpuUsage()) / 1e6;
  const counters: [string, string, () => number][] = [
    ["process_cpu_user_seconds_total", "User CPU time spent in seconds.", cpu((u) => u.user)],
    ["process_cpu_system_seconds_total", "System CPU time spent in seconds.", cpu((u) => u.system)],
    [
      "process_cpu_seconds_total",
      "Total user and system CPU time spent in seconds.",
      cpu((u) => u.user + u.system),
    ],
  ];
  for (const [name, help, read] of counters) {
    registry.register(new Sampled(name, help, "counter", () => line(name, read())));
  }
  const gauges: [string, string, () => number][] = [
    ["process_resident_memory_bytes", "Resident memory size in bytes.", () => process.memoryUsage.rss()],
    ["process_open_fds", "Number of open file descriptors.", openFds],
    ["process_max_fds", "Maximum number of open file descriptors.", maxFds],
    ["process_start_time_seconds", "Start time of the process since unix epoch in seconds.", () => startTime],
    [
      "nodejs_heap_size_total_bytes",
      "Process heap size from V8 in bytes.",
      () => getHeapStatistics().total_heap_size,
    ],
    [
      "nodejs_heap_size_used_bytes",
      "Process heap size used from V8 in bytes.",
      () => getHeapStatistics().used_heap_size,
    ],
  ];
  for (const [name, help, read] of gauges) {
    registry.register(new Sampled(name, help, "gauge", () => line(name, read())));
  }

  // Delays since the previous scrape: a stall between two scrapes shows in the next one.
  const loop: IntervalHistogram = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
  loop.enable();
  registry.register(
    new Sampled(
      "nodejs_eventloop_lag_seconds",
      "Event loop delay since the previous scrape, by quantile (perf_hooks.monitorEventLoopDelay).",
      "gauge",
      () => {
        // An empty histogram (no tick since the last scrape) reports 0, not NaN.
        const q = (p: number) => (loop.count === 0 ? 0 : loop.percentile(p) / 1e9);
        const out =
          line("nodejs_eventloop_lag_seconds", q(50), 'quantile="0.5"') +
          line("nodejs_eventloop_lag_seconds", q(99), 'quantile="0.99"');
        loop.reset();
        return out;
      },
    ),
  );

  const gc = registry.register(
    new Histogram("nodejs_gc_duration_seconds", "Garbage collection duration by kind.", GC_BUCKETS_SECONDS),
  );
  for (const kind of Object.values(GC_KINDS)) gc.zero({ kind });
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = GC_KINDS[(entry as unknown as { detail?: { kind?: number } }).detail?.kind ?? -1];
      if (kind !== undefined) gc.observe(entry.duration / 1000, { kind });
    }
  });
  observer.observe({ entryTypes: ["gc"] });

  return {
    stop() {
      loop.disable();
      observer.disconnect();
    },
  };
}
