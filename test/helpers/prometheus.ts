// A strict reader of the Prometheus text exposition format (0.0.4), so tests fail on anything a
// Prometheus server would reject or misread: samples before their HELP/TYPE, a family declared
// twice, a sample of another family inside one, bad label syntax, unparsable values, duplicate
// series, non-cumulative histogram buckets.

import assert from "node:assert/strict";

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge" | "histogram" | "summary" | "untyped";
  readonly samples: Sample[];
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)$`);
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(?:,|$)/;

function parseValue(text: string): number {
  if (text === "+Inf") return Number.POSITIVE_INFINITY;
  if (text === "-Inf") return Number.NEGATIVE_INFINITY;
  if (text === "NaN") return Number.NaN;
  assert.match(text, /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/, `value ${JSON.stringify(text)}`);
  return Number(text);
}

function parseLabels(text: string | undefined): Record<string, string> {
  const labels: Record<string, string> = {};
  let rest = text ?? "";
  while (rest !== "") {
    const m = LABEL.exec(rest);
    assert.ok(m !== null, `label syntax: ${JSON.stringify(rest)}`);
    const [all, key, value] = m as unknown as [string, string, string];
    assert.ok(!(key in labels), `label ${key} twice`);
    labels[key] = value.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    rest = rest.slice(all.length);
  }
  return labels;
}

/** Which family a sample name belongs to, given the family's type. */
function belongs(sample: string, family: Family): boolean {
  if (sample === family.name) return family.type !== "histogram";
  if (family.type === "histogram")
    return [`${family.name}_bucket`, `${family.name}_sum`, `${family.name}_count`].includes(sample);
  if (family.type === "summary") return [`${family.name}_sum`, `${family.name}_count`].includes(sample);
  return false;
}

export function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const series = new Set<string>();
  let current: Family | undefined;
  let pendingHelp: { name: string; help: string } | undefined;
  assert.ok(text === "" || text.endsWith("\n"), "ends with a newline");
  for (const line of text.split("\n").slice(0, -1)) {
    if (line.startsWith("# HELP ")) {
      const m = new RegExp(`^# HELP (${NAME}) (.*)$`).exec(line);
      assert.ok(m !== null, `HELP line: ${line}`);
      pendingHelp = { name: m[1] as string, help: m[2] as string };
      continue;
    }
    if (line.startsWith("# TYPE ")) {
      const m = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line);
      assert.ok(m !== null, `TYPE line: ${line}`);
      const name = m[1] as string;
      assert.ok(!families.has(name), `family ${name} declared twice`);
      assert.equal(pendingHelp?.name, name, `HELP before TYPE for ${name}`);
      current = { name, help: pendingHelp?.help ?? "", type: m[2] as Family["type"], samples: [] };
      families.set(name, current);
      pendingHelp = undefined;
      continue;
    }
    assert.ok(!line.startsWith("#") && line !== "", `unexpected line: ${JSON.stringify(line)}`);
    const m = SAMPLE.exec(line);
    assert.ok(m !== null, `sample line: ${line}`);
    assert.ok(
      current !== undefined && belongs(m[1] as string, current),
      `sample outside its family: ${line}`,
    );
    const sample = { name: m[1] as string, labels: parseLabels(m[2]), value: parseValue(m[3] as string) };
    const key = `${sample.name}{${Object.entries(sample.labels)
      .sort()
      .map(([k, v]) => `${k}=${v}`)
      .join(",")}}`;
    assert.ok(!series.has(key), `series twice: ${key}`);
    series.add(key);
    current.samples.push(sample);
  }
  for (const family of families.values()) checkFamily(family);
  return families;
}

function checkFamily(family: Family): void {
  if (family.type === "counter") {
    for (const s of family.samples) assert.ok(s.value >= 0, `${s.name} counts up from 0`);
  }
  if (family.type !== "histogram") return;
  const bySeries = new Map<string, Sample[]>();
  for (const s of family.samples) {
    const { le: _le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    bySeries.set(key, [...(bySeries.get(key) ?? []), s]);
  }
  for (const samples of bySeries.values()) {
    const buckets = samples.filter((s) => s.name.endsWith("_bucket"));
    assert.ok(buckets.length > 0 && buckets.at(-1)?.labels.le === "+Inf", `${family.name}: +Inf bucket last`);
    for (let i = 1; i < buckets.length; i++) {
      assert.ok(
        (buckets[i] as Sample).value >= (buckets[i - 1] as Sample).value,
        `${family.name}: cumulative buckets`,
      );
    }
    const count = samples.find((s) => s.name.endsWith("_count"));
    assert.equal(count?.value, buckets.at(-1)?.value, `${family.name}: _count equals the +Inf bucket`);
    assert.ok(
      samples.some((s) => s.name.endsWith("_sum")),
      `${family.name}: _sum`,
    );
  }
}

export async function scrape(admin: string): Promise<Map<string, Family>> {
  const response = await fetch(`http://${admin}/metrics`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return parseExposition(await response.text());
}

/** The one sample of `name` with exactly these labels (none: the unlabelled one). */
export function sampleValue(
  families: Map<string, Family>,
  family: string,
  labels: Record<string, string> = {},
  name = family,
): number {
  const f = families.get(family);
  assert.ok(f !== undefined, `family ${family} is exposed`);
  const want = JSON.stringify(Object.entries(labels).sort());
  const s = f.samples.find(
    (x) => x.name === name && JSON.stringify(Object.entries(x.labels).sort()) === want,
  );
  assert.ok(s !== undefined, `${name}${want} has a sample`);
  return s.value;
}
