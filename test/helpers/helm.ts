// Renders helm/osm-cert as Helm would, with test/helm/render.go (Go's text/template + sprig +
// gojsonschema, the engines Helm itself uses) built once from Debian's packages. No helm binary can be
// installed here (issue 6); a missing toolchain is an error that says what to install, never a skip.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, copyFile, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { stringify } from "yaml";

const run = promisify(execFile);

export const CHART_DIR = fileURLToPath(new URL("../../../helm/osm-cert", import.meta.url));
const RENDER_GO = fileURLToPath(new URL("../../../test/helm/render.go", import.meta.url));
const DEBIAN_GOPATH = "/usr/share/gocode";
const GO_PACKAGES = [
  "golang-go",
  "golang-github-masterminds-sprig-dev",
  "golang-gopkg-yaml.v2-dev",
  "golang-github-xeipuuv-gojsonschema-dev",
];
const NEEDED_SOURCES = [
  "github.com/Masterminds/sprig",
  "github.com/Masterminds/semver",
  "github.com/xeipuuv/gojsonschema",
  "gopkg.in/yaml.v2",
];

let built: Promise<string> | undefined;

/** The renderer binary, built on first use and cached in the temp dir by the hash of its source. */
export function helmRenderer(): Promise<string> {
  built ??= build();
  return built;
}

async function build(): Promise<string> {
  const source = await readFile(RENDER_GO);
  const hash = createHash("sha256").update(source).digest("hex").slice(0, 16);
  const cache = join(tmpdir(), "osm-cert-helm-render");
  const binary = join(cache, `render-${hash}`);
  if (await exists(binary)) return binary;

  const missing = [];
  try {
    await run("go", ["version"]);
  } catch {
    missing.push("the go command");
  }
  for (const dir of NEEDED_SOURCES) {
    if (!(await exists(join(DEBIAN_GOPATH, "src", dir)))) missing.push(`${DEBIAN_GOPATH}/src/${dir}`);
  }
  if (missing.length > 0) {
    throw new Error(
      `cannot build the Helm renderer: missing ${missing.join(", ")}. Install them with ` +
        `\`apt-get install -y --no-install-recommends ${GO_PACKAGES.join(" ")}\` (.ci/run does)`,
    );
  }

  // GOPATH mode, offline: the package must sit under a GOPATH src tree, and a go.mod next to it lets
  // the go command resolve sprig's and semver's /v3 import paths ("minimal module compatibility").
  const work = join(cache, `build-${process.pid}-${hash}`);
  const pkg = join(work, "src", "osmcertrender");
  await mkdir(pkg, { recursive: true });
  await copyFile(RENDER_GO, join(pkg, "render.go"));
  await writeFile(join(pkg, "go.mod"), "module osmcertrender\n\ngo 1.19\n");
  const output = join(work, "render");
  try {
    await run("go", ["build", "-o", output, "."], {
      cwd: pkg,
      env: {
        ...process.env,
        GO111MODULE: "off",
        GOPATH: `${work}:${DEBIAN_GOPATH}`,
        GOCACHE: join(cache, "go-build-cache"),
        GOFLAGS: "",
        GOPROXY: "off",
      },
    });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? "";
    throw new Error(`go build of test/helm/render.go failed:\n${stderr}`);
  }
  await rename(output, binary); // atomic: a concurrent build never sees half a binary
  await rm(work, { recursive: true, force: true });
  return binary;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

export interface RenderOptions {
  /** Default: helm/osm-cert. */
  readonly chart?: string;
  readonly values?: readonly Record<string, unknown>[];
  readonly namespace?: string;
  readonly releaseName?: string;
  readonly upgrade?: boolean;
  readonly kubeVersion?: string;
  readonly apiVersions?: readonly string[];
  readonly skipSchemaValidation?: boolean;
}

export type RenderResult =
  | { readonly ok: true; readonly manifests: Record<string, string>; readonly notes: string }
  | { readonly ok: false; readonly error: string };

/** `helm template` of the chart: manifests by template name, NOTES.txt apart, or Helm's error text. */
export async function renderChart(options: RenderOptions = {}): Promise<RenderResult> {
  const binary = await helmRenderer();
  const dir = join(tmpdir(), `osm-cert-values-${process.pid}-${Math.random().toString(36).slice(2)}`);
  await mkdir(dir, { recursive: true });
  try {
    const args: string[] = [];
    for (const [index, values] of (options.values ?? []).entries()) {
      const file = join(dir, `values-${index}.yaml`);
      await writeFile(file, stringify(values));
      args.push("-f", file);
    }
    args.push("--namespace", options.namespace ?? "osm-system", "--name", options.releaseName ?? "osm-cert");
    if (options.upgrade) args.push("--upgrade");
    if (options.kubeVersion) args.push("--kube-version", options.kubeVersion);
    if (options.apiVersions?.length) args.push("--api-versions", options.apiVersions.join(","));
    if (options.skipSchemaValidation) args.push("--skip-schema-validation");
    args.push(options.chart ?? CHART_DIR);
    try {
      const { stdout } = await run(binary, args, { maxBuffer: 16 * 1024 * 1024 });
      const parsed = JSON.parse(stdout) as { manifests: Record<string, string>; notes: string };
      return { ok: true, manifests: parsed.manifests, notes: parsed.notes };
    } catch (error) {
      const failure = error as { code?: unknown; stderr?: string };
      if (failure.code === 1 && typeof failure.stderr === "string")
        return { ok: false, error: failure.stderr };
      throw error;
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
