// One /metrics for a server of several processes (server/workers.ts): the expositions of the
// primary and of every worker merged family by family (the text format wants each family's samples
// together, under one HELP and TYPE), every sample labelled with the process it came from
// (worker="primary" or the worker's number). Counters are per process, as Prometheus expects of a
// target whose processes restart independently: sum by (…) over `worker` gives the server's total.

export interface Exposition {
  /** The value of the `worker` label for this process's samples. */
  readonly worker: string;
  readonly text: string;
}

interface Family {
  help: string | null;
  type: string | null;
  readonly samples: string[];
}

export function mergeExpositions(sources: readonly Exposition[]): string {
  const families = new Map<string, Family>();
  const family = (name: string): Family => {
    let found = families.get(name);
    if (found === undefined) {
      found = { help: null, type: null, samples: [] };
      families.set(name, found);
    }
    return found;
  };
  for (const { worker, text } of sources) {
    const label = `worker="${worker.replace(/[\\"\n]/g, "_")}"`;
    let current: Family | null = null;
    for (const line of text.split("\n")) {
      if (line === "") continue;
      if (line.startsWith("# HELP ") || line.startsWith("# TYPE ")) {
        const rest = line.slice(7);
        const space = rest.indexOf(" ");
        const name = space === -1 ? rest : rest.slice(0, space);
        current = family(name);
        if (line[2] === "H") current.help ??= line;
        else current.type ??= line;
        continue;
      }
      if (line.startsWith("#")) continue;
      // A sample belongs to the family announced before it (name_bucket, name_sum… included).
      const target = current ?? family(line.split(/[{ ]/, 1)[0] as string);
      const brace = line.indexOf("{");
      const space = line.indexOf(" ");
      if (brace !== -1 && (space === -1 || brace < space)) {
        const empty = line[brace + 1] === "}";
        target.samples.push(`${line.slice(0, brace + 1)}${label}${empty ? "" : ","}${line.slice(brace + 1)}`);
      } else {
        target.samples.push(`${line.slice(0, space)}{${label}}${line.slice(space)}`);
      }
    }
  }
  let out = "";
  for (const { help, type, samples } of families.values()) {
    if (help !== null) out += `${help}\n`;
    if (type !== null) out += `${type}\n`;
    for (const sample of samples) out += `${sample}\n`;
  }
  return out;
}
