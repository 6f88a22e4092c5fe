// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
// exposition format (version 0.0.4). Both processes need only this much; a full client library
// would cost the agent start-up time and memory for features we never use.

type Labels = Readonly<Record<string, string>>;

function labelKey(labels: Labels | undefined): string {
  if (labels === undefined) return "";
  const keys = Object.keys(labels);
  if (keys.length === 0) return "";
  keys.sort();
  return keys.map((k) => `${k}="${escapeLabel(labels[k] as string)}"`).join(",");
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}

/** One metric family: anything that renders its HELP, TYPE and samples at scrape time. */
export interface Metric {
  readonly name: string;
  render(): string;
}

abstract class Sampled implements Metric {
  protected readonly values = new Map<string, number>();
  constructor(
    readonly name: string,
    private readonly help: string,
    private readonly type: "counter" | "gauge",
  ) {}
  get(labels?: Labels): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }
  /**
   * Shows a series as 0 before anything happened to it, so a dashboard or an alert on a rate sees
   * 0 rather than no data. Call it for every label set known in advance (or none if unlabelled).
   */
  zero(labels?: Labels): this {
    const key = labelKey(labels);
    if (!this.values.has(key)) this.values.set(key, 0);
    return this;
  }
  render(): string {
    let out = `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} ${this.type}\n`;
    for (const [key, value] of this.values) {
      out += `${this.name}${key === "" ? "" : `{${key}}`} ${formatValue(value)}\n`;
    }
    return out;
  }
}

export class Counter extends Sampled {
  constructor(name: string, help: string) {
    super(name, help, "counter");
  }
  inc(labels?: Labels, by = 1): void {
    const key = labelKey(labels);
    this.values.set(key, (this.values.get(key) ?? 0) + by);
  }
}

export class Gauge extends Sampled {
  constructor(name: string, help: string) {
    super(name, help, "gauge");
  }
  set(value: number, labels?: Labels): void {
    this.values.set(labelKey(labels), value);
  }
  inc(labels?: Labels, by = 1): void {
    const key = labelKey(labels);
    this.values.set(key, (this.values.get(key) ?? 0) + by);
  }
  dec(labels?: Labels, by = 1): void {
    this.inc(labels, -by);
  }
}

interface HistogramSeries {
  readonly counts: number[];
  sum: number;
  count: number;
}

export class Histogram implements Metric {
  private readonly series = new Map<string, HistogramSeries>();
  constructor(
    readonly name: string,
    private readonly help: string,
    private readonly buckets: readonly number[],
  ) {}
  /** Shows a series with empty buckets before its first observation (see Sampled.zero). */
  zero(labels?: Labels): this {
    this.seriesFor(labelKey(labels));
    return this;
  }
  observe(value: number, labels?: Labels): void {
    const s = this.seriesFor(labelKey(labels));
    for (let i = 0; i < this.buckets.length; i++) {
      if (value <= (this.buckets[i] as number)) s.counts[i] = (s.counts[i] as number) + 1;
    }
    s.sum += value;
    s.count += 1;
  }
  count(labels?: Labels): number {
    return this.series.get(labelKey(labels))?.count ?? 0;
  }
  private seriesFor(key: string): HistogramSeries {
    let s = this.series.get(key);
    if (s === undefined) {
      s = { counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 };
      this.series.set(key, s);
    }
    return s;
  }
  render(): string {
    let out = `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} histogram\n`;
    for (const [key, s] of this.series) {
      const sep = key === "" ? "" : ",";
      for (let i = 0; i < this.buckets.length; i++) {
        out += `${this.name}_bucket{${key}${sep}le="${this.buckets[i]}"} ${s.counts[i]}\n`;
      }
      out += `${this.name}_bucket{${key}${sep}le="+Inf"} ${s.count}\n`;
      const braces = key === "" ? "" : `{${key}}`;
      out += `${this.name}_sum${braces} ${s.sum}\n${this.name}_count${braces} ${s.count}\n`;
    }
    return out;
  }
}

export class MetricsRegistry {
  private readonly metrics = new Map<string, Metric>();

  counter(name: string, help: string): Counter {
    return this.register(new Counter(name, help));
  }
  gauge(name: string, help: string): Gauge {
    return this.register(new Gauge(name, help));
  }
  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    return this.register(new Histogram(name, help, buckets));
  }
  render(): string {
    let out = "";
    for (const metric of this.metrics.values()) out += metric.render();
    return out;
  }
  /** Adds a family computed at scrape time (process and runtime metrics, see process-metrics.ts). */
  register<M extends Metric>(metric: M): M {
    if (this.metrics.has(metric.name)) throw new Error(`metric ${metric.name} registered twice`);
    this.metrics.set(metric.name, metric);
    return metric;
  }
}

export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
