// Command-line flags with environment fallbacks (DESIGN.md §11). Each subcommand declares its flags
// once; parsing, validation, `--help` text and the environment names all come from that table, so
// they cannot drift apart. Bad values end start-up with exit code 2 and one line naming the flag.

import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { parseDuration } from "./duration.js";

export type FlagKind = "string" | "duration" | "number" | "boolean" | "list";

export interface FlagSpec {
  readonly kind: FlagKind;
  readonly help: string;
  readonly default?: string;
  /** Environment variable; defaults to OSM_CERT_<FLAG_NAME>. OSM's own names where it has one. */
  readonly env?: string;
  readonly required?: boolean;
  readonly choices?: readonly string[];
  /** Extra validation; throw with a message that completes "invalid --flag: ". */
  readonly validate?: (value: string) => void;
}

export type FlagTable = Readonly<Record<string, FlagSpec>>;

type FlagValue<S extends FlagSpec> = S["kind"] extends "duration" | "number"
  ? number
  : S["kind"] extends "boolean"
    ? boolean
    : S["kind"] extends "list"
      ? string[]
      : string;

export type ParsedFlags<T extends FlagTable> = {
  -readonly [K in keyof T]: T[K]["required"] extends true
    ? FlagValue<T[K]>
    : T[K]["default"] extends string
      ? FlagValue<T[K]>
      : T[K]["kind"] extends "boolean" | "list"
        ? FlagValue<T[K]>
        : FlagValue<T[K]> | undefined;
};

/** A usage error: the CLI prints the message as one line and exits 2. */
export class FlagError extends Error {
  readonly code = "ERR_OSM_CERT_FLAG";
  readonly exitCode = 2;
}

/** Raised for --help: the CLI prints the text and exits 0. */
export class HelpRequested extends Error {
  readonly code = "ERR_OSM_CERT_HELP";
}

export function envName(flag: string, spec: FlagSpec): string {
  return spec.env ?? `OSM_CERT_${flag.toUpperCase().replace(/-/g, "_")}`;
}

export function parseFlags<T extends FlagTable>(
  command: string,
  table: T,
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): ParsedFlags<T> {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const [name, spec] of Object.entries(table)) {
    options[name] =
      spec.kind === "boolean" ? { type: "boolean" } : { type: "string", multiple: spec.kind === "list" };
  }
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    ({ values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }));
  } catch (error) {
    throw new FlagError(`${command}: ${(error as Error).message.split("\n")[0]} (see --help)`);
  }
  if (values.help === true) throw new HelpRequested(usage(command, table));

  const result: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(table)) {
    const fromEnv = env[envName(name, spec)];
    let raw = values[name];
    if (raw === undefined && fromEnv !== undefined && fromEnv !== "") {
      raw = spec.kind === "list" ? fromEnv.split(",").map((s) => s.trim()) : fromEnv;
    }
    if (raw === undefined && spec.default !== undefined) {
      raw = spec.kind === "list" ? spec.default.split(",").filter((s) => s !== "") : spec.default;
    }
    if (raw === undefined) {
      if (spec.required)
        throw new FlagError(`${command}: missing required flag --${name} (or ${envName(name, spec)})`);
      result[name] = spec.kind === "list" ? [] : spec.kind === "boolean" ? false : undefined;
      continue;
    }
    result[name] = convert(command, name, spec, raw);
  }
  return result as ParsedFlags<T>;
}

function convert(
  command: string,
  name: string,
  spec: FlagSpec,
  raw: string | boolean | (string | boolean)[],
): unknown {
  const fail = (why: string): never => {
    throw new FlagError(`${command}: invalid --${name}: ${why}`);
  };
  if (spec.kind === "boolean") {
    if (typeof raw === "boolean") return raw;
    if (raw === "true" || raw === "1") return true;
    if (raw === "false" || raw === "0") return false;
    return fail(`"${String(raw)}" is not true or false`);
  }
  if (spec.kind === "list") {
    const items = (Array.isArray(raw) ? raw : [raw]).map(String).flatMap((s) => s.split(","));
    return items.map((s) => s.trim()).filter((s) => s !== "");
  }
  const text = String(raw);
  if (spec.choices !== undefined && !spec.choices.includes(text)) {
    fail(`"${text}" is not one of ${spec.choices.join(", ")}`);
  }
  try {
    spec.validate?.(text);
  } catch (error) {
    fail((error as Error).message);
  }
  if (spec.kind === "duration") {
    try {
      return parseDuration(text);
    } catch (error) {
      return fail((error as Error).message);
    }
  }
  if (spec.kind === "number") {
    const n = Number(text);
    if (text.trim() === "" || !Number.isFinite(n)) fail(`"${text}" is not a number`);
    return n;
  }
  return text;
}

export function usage(command: string, table: FlagTable): string {
  const lines = [
    `Usage: osm-cert ${command} [flags]`,
    "",
    "Flags (each also read from the environment variable shown):",
  ];
  for (const [name, spec] of Object.entries(table)) {
    const meta = spec.kind === "boolean" ? "" : ` <${spec.choices?.join("|") ?? spec.kind}>`;
    const extra = [
      spec.required ? "required" : undefined,
      spec.default !== undefined && spec.default !== "" ? `default ${spec.default}` : undefined,
      `env ${envName(name, spec)}`,
    ].filter((s) => s !== undefined);
    lines.push(`  --${name}${meta}`, `      ${spec.help} (${extra.join("; ")})`);
  }
  return `${lines.join("\n")}\n`;
}

/** A file named by a flag could not be read; the message names the flag, the path and why. */
export class FlagFileError extends Error {
  readonly code = "ERR_OSM_CERT_FLAG_FILE";
}

const FS_REASONS: Readonly<Record<string, string>> = {
  ENOENT: "no such file",
  EACCES: "permission denied",
  EISDIR: "is a directory, not a file",
  ENOTDIR: "a parent of the path is not a directory",
  ELOOP: "too many symbolic links",
};

/** Reads the text file `--flag` names. */
export async function readFlagFile(flag: string, path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    throw new FlagFileError(`--${flag} ${path}: ${FS_REASONS[code] ?? (error as Error).message}`);
  }
}
