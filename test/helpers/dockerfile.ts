// Reads a Dockerfile and a .dockerignore the way `docker build` does, as far as a test without a
// Docker engine needs: instructions (line continuations, comments, exec and shell forms), stages,
// ARG defaults in FROM, COPY sources and flags; and .dockerignore's matching (Go filepath.Match
// patterns plus `**`, `!` exceptions, last match wins, a path excluded with its parent).

export interface Instruction {
  readonly keyword: string;
  /** The text after the keyword, continuations joined. */
  readonly args: string;
  readonly line: number;
}

export interface Copy {
  readonly from: string | undefined;
  readonly sources: readonly string[];
  readonly dest: string;
  readonly line: number;
}

export interface Stage {
  /** The base image, ARGs substituted. */
  readonly base: string;
  readonly name: string | undefined;
  readonly instructions: readonly Instruction[];
}

export function parseInstructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const first = lines[i] as string;
    if (/^\s*(#.*)?$/.test(first)) continue;
    const start = i + 1;
    let joined = first;
    // A trailing backslash continues the instruction; comment lines inside it are dropped.
    while (/\\\s*$/.test(joined) && i + 1 < lines.length) {
      i++;
      const next = lines[i] as string;
      joined = joined.replace(/\\\s*$/, " ");
      if (!/^\s*#/.test(next)) joined += next;
    }
    const match = /^\s*([A-Za-z]+)\s+(.*)$/.exec(joined);
    if (match === null) throw new Error(`Dockerfile line ${start}: cannot read "${first}"`);
    out.push({ keyword: (match[1] as string).toUpperCase(), args: (match[2] as string).trim(), line: start });
  }
  return out;
}

function substitute(text: string, args: ReadonlyMap<string, string>): string {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, a: string | undefined, b: string | undefined) => {
    const value = args.get((a ?? b) as string);
    if (value === undefined) throw new Error(`${whole} has no ARG default`);
    return value;
  });
}

export function parseStages(text: string): Stage[] {
  const globalArgs = new Map<string, string>();
  const stages: { base: string; name: string | undefined; instructions: Instruction[] }[] = [];
  for (const instruction of parseInstructions(text)) {
    if (instruction.keyword === "FROM") {
      const match = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.args);
      if (match === null) throw new Error(`Dockerfile line ${instruction.line}: bad FROM`);
      stages.push({ base: substitute(match[1] as string, globalArgs), name: match[2], instructions: [] });
    } else if (stages.length === 0) {
      if (instruction.keyword !== "ARG") throw new Error(`Dockerfile line ${instruction.line}: before FROM`);
      const [name, value] = instruction.args.split("=", 2);
      if (value !== undefined) globalArgs.set(name as string, value);
    } else {
      stages[stages.length - 1]?.instructions.push(instruction);
    }
  }
  return stages;
}

/** Exec form (JSON array) or shell form, as Docker reads COPY, ENTRYPOINT and CMD. */
export function words(args: string): string[] {
  if (args.startsWith("[")) return JSON.parse(args) as string[];
  return args.split(/\s+/).filter((w) => w !== "");
}

export function copies(stage: Stage): Copy[] {
  return stage.instructions
    .filter((i) => i.keyword === "COPY" || i.keyword === "ADD")
    .map((i) => {
      const parts = words(i.args);
      let from: string | undefined;
      while (parts[0]?.startsWith("--")) {
        const flag = parts.shift() as string;
        if (flag.startsWith("--from=")) from = flag.slice("--from=".length);
      }
      const dest = parts.pop();
      if (dest === undefined || parts.length === 0)
        throw new Error(`Dockerfile line ${i.line}: COPY needs a source`);
      return { from, sources: parts, dest, line: i.line };
    });
}

/** The value of the last instruction of that kind in the stage, if any. */
export function last(stage: Stage, keyword: string): Instruction | undefined {
  return stage.instructions.filter((i) => i.keyword === keyword).at(-1);
}

// ---- .dockerignore ----

interface IgnoreRule {
  readonly exception: boolean;
  readonly pattern: RegExp;
}

function patternRegExp(pattern: string): RegExp {
  let out = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === "*" && pattern[i + 1] === "*") {
      // `**/` matches any number of directories, also none.
      out += pattern[i + 2] === "/" ? "(?:.*/)?" : ".*";
      i += pattern[i + 2] === "/" ? 2 : 1;
    } else if (c === "*") out += "[^/]*";
    else if (c === "?") out += "[^/]";
    else out += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${out}$`);
}

export function parseDockerignore(text: string): IgnoreRule[] {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => {
      const exception = l.startsWith("!");
      const cleaned = (exception ? l.slice(1) : l).replace(/^\/+|\/+$/g, "").replace(/^\.\//, "");
      return { exception, pattern: patternRegExp(cleaned) };
    });
}

/** Whether the build context leaves `path` (relative to the context root) out. */
export function isIgnored(rules: readonly IgnoreRule[], path: string): boolean {
  const parts = path.replace(/^\.\//, "").split("/");
  let ignored = false;
  for (let n = 1; n <= parts.length; n++) {
    const prefix = parts.slice(0, n).join("/");
    for (const rule of rules) if (rule.pattern.test(prefix)) ignored = !rule.exception;
    // Docker drops an excluded directory whole unless an exception could re-include inside it.
    if (ignored && n < parts.length && !rules.some((r) => r.exception)) return true;
  }
  return ignored;
}
