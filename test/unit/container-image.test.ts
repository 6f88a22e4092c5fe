// The container image, checked without a Docker engine (none runs here): the Dockerfile read as
// Docker reads it, every path it copies present after `npm run build`, and the runtime stage rebuilt
// as a directory — exactly what its COPY lines take, with node_modules reduced to what `npm prune
// --omit=dev` keeps (the lockfile's non-dev packages) — in which the real commands then run.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { builtinModules } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";
import { AGENT_NODE_OPTIONS } from "../../common/agent-node-options.js";
import {
  copies,
  isIgnored,
  last,
  parseDockerignore,
  parseStages,
  type Stage,
  words,
} from "../helpers/dockerfile.js";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const dockerfile = readFileSync(join(REPO, "Dockerfile"), "utf8");
const stages = parseStages(dockerfile);
const ignore = parseDockerignore(readFileSync(join(REPO, ".dockerignore"), "utf8"));
const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as {
  dependencies: Record<string, string>;
};
const lock = JSON.parse(readFileSync(join(REPO, "package-lock.json"), "utf8")) as {
  packages: Record<string, { dev?: boolean; devOptional?: boolean }>;
};

const build = stages.find((s) => s.name === "build") as Stage;
const runtime = stages.at(-1) as Stage;
const workdir = (stage: Stage) => last(stage, "WORKDIR")?.args ?? "/";

/** What `npm prune --omit=dev` leaves: every lockfile package not marked dev. */
const PRODUCTION_PACKAGES = Object.entries(lock.packages)
  .filter(
    ([path, entry]) => path.startsWith("node_modules/") && entry.dev !== true && entry.devOptional !== true,
  )
  .map(([path]) => path);

function walk(dir: string): string[] {
  return readdirSync(dir, { recursive: true })
    .map(String)
    .map((f) => join(dir, f))
    .filter((f) => statSync(f).isFile());
}

function sizeOf(dir: string): number {
  return walk(dir).reduce((sum, f) => sum + statSync(f).size, 0);
}

describe("Dockerfile", () => {
  test("a build stage on the full Node image, a runtime stage on the slim one, same Node release", () => {
    assert.ok(stages.length >= 2, "multi-stage");
    assert.ok(build, 'a stage named "build"');
    assert.notEqual(runtime, build);
    const version = /^node:([\d.]+)-bookworm$/.exec(build.base)?.[1];
    assert.ok(version, `build base ${build.base}`);
    // The agent's V8 code cache is accepted only by the V8 that made it: same release in both.
    assert.equal(runtime.base, `node:${version}-bookworm-slim`);
    assert.equal(version.split(".")[0], "20");
  });

  test("the build installs from the lockfile, builds, and prunes dev dependencies", () => {
    const runs = build.instructions.filter((i) => i.keyword === "RUN").map((i) => i.args);
    assert.ok(runs.some((r) => /\bnpm ci\b/.test(r)));
    const buildRun = runs.find((r) => r.includes("npm run build"));
    assert.ok(buildRun);
    assert.match(buildRun, /npm prune --omit=dev/);
    assert.ok(!runtime.instructions.some((i) => i.keyword === "RUN"), "the runtime stage runs nothing");
  });

  test("the runtime stage runs as a numeric non-root user and starts the CLI", () => {
    const user = last(runtime, "USER")?.args;
    assert.ok(user, "USER is set");
    const [uid, gid] = user.split(":");
    // Kubernetes' runAsNonRoot can only check a numeric user.
    assert.match(uid ?? "", /^\d+$/);
    assert.notEqual(Number(uid), 0);
    if (gid !== undefined) assert.notEqual(Number(gid), 0);
    const entrypoint = last(runtime, "ENTRYPOINT");
    assert.ok(entrypoint, "ENTRYPOINT is set");
    assert.ok(entrypoint.args.startsWith("["), "exec form, so signals reach node");
    assert.deepEqual(words(entrypoint.args), ["node", "/app/dist/cli/main.js"]);
    assert.equal(workdir(runtime), "/app");
  });

  test("every context path the build copies exists and is not left out by .dockerignore", () => {
    const fromContext = copies(build).filter((c) => c.from === undefined);
    assert.ok(fromContext.length > 0);
    for (const copy of fromContext) {
      for (const source of copy.sources) {
        assert.ok(existsSync(join(REPO, source)), `${source} (line ${copy.line}) exists`);
        assert.equal(isIgnored(ignore, source), false, `${source} is sent to the build`);
        if (statSync(join(REPO, source)).isDirectory()) {
          const files = walk(join(REPO, source)).map((f) => relative(REPO, f));
          assert.ok(
            files.some((f) => !isIgnored(ignore, f)),
            `${source} is not empty in the context`,
          );
        }
      }
    }
    // Every source folder compiled into the runtime's dist/ reaches the build.
    for (const folder of ["agent", "cli", "common", "proto", "server", "scripts"]) {
      assert.ok(
        fromContext.some((c) => c.sources.includes(folder)),
        `${folder}/ is copied into the build stage`,
      );
    }
    // What the build makes or must not see stays out of the context.
    for (const path of ["node_modules/yaml/package.json", "dist/cli/main.js", ".git/HEAD"]) {
      assert.equal(isIgnored(ignore, path), true, `${path} is not sent`);
    }
  });

  test("every path the runtime copies from the build exists after npm run build", () => {
    const fromBuild = copies(runtime).filter((c) => c.from === "build");
    assert.ok(fromBuild.length > 0);
    assert.ok(
      copies(runtime).every((c) => c.from === "build"),
      "the runtime takes nothing from the context",
    );
    for (const copy of fromBuild) {
      for (const source of copy.sources) {
        assert.ok(source.startsWith(`${workdir(build)}/`), `${source} is under the build WORKDIR`);
        const path = join(REPO, relative(workdir(build), source));
        assert.ok(existsSync(path), `${source} (line ${copy.line}) exists after npm run build`);
      }
    }
  });
});

describe("the runtime stage, rebuilt as a directory", () => {
  let root: string;
  let app: string;

  before(() => {
    root = mkdtempSync(join(tmpdir(), "osm-cert-image-"));
    // Node looks for node_modules in every parent folder: none may exist above the layout, or the
    // test would quietly borrow packages the image does not have.
    for (let dir = dirname(root); ; dir = dirname(dir)) {
      assert.equal(existsSync(join(dir, "node_modules")), false, `${dir}/node_modules must not exist`);
      if (dir === dirname(dir)) break;
    }
    const buildRun = build.instructions.find((i) => i.args.includes("npm run build"))?.args ?? "";
    const dropsMaps = buildRun.includes("find dist -name '*.map' -delete");
    for (const copy of copies(runtime)) {
      const dest = resolve(workdir(runtime), copy.dest);
      for (const source of copy.sources) {
        const rel = relative(workdir(build), source);
        const target = copy.dest.endsWith("/") ? join(dest, rel.split("/").at(-1) as string) : dest;
        const into = join(root, target);
        if (rel === "node_modules") {
          for (const pkgPath of PRODUCTION_PACKAGES)
            cpSync(join(REPO, pkgPath), join(into, relative("node_modules", pkgPath)), { recursive: true });
        } else {
          cpSync(join(REPO, rel), into, {
            recursive: true,
            filter: (src) => !(dropsMaps && src.endsWith(".map")),
          });
        }
      }
    }
    app = join(root, "app");
  });

  after(() => {
    if (root !== undefined) rmSync(root, { recursive: true, force: true });
  });

  function run(args: string[]) {
    return new Promise<{ code: number; stdout: string; stderr: string }>((done, fail) => {
      const env = { PATH: process.env.PATH ?? "", HOME: root };
      execFile(
        process.execPath,
        [join(app, "dist/cli/main.js"), ...args],
        { cwd: root, env },
        (error, stdout, stderr) => {
          if (error !== null && typeof error.code !== "number") fail(error);
          else done({ code: error === null ? 0 : (error.code as number), stdout, stderr });
        },
      );
    });
  }

  test("every import in the shipped code resolves: relative files exist, packages are dependencies", () => {
    const files = walk(join(app, "dist")).filter((f) => /\.(c?js)$/.test(f));
    assert.ok(files.length > 20, "the dist files are there");
    const builtins = new Set(builtinModules);
    const problems: string[] = [];
    const seen = new Set<string>();
    for (const file of files) {
      const source = readFileSync(file, "utf8");
      // The minified agent bundle is CommonJS: only its require() calls are imports.
      const patterns = file.endsWith(".cjs")
        ? [/\brequire\(\s*["']([^"']+)["']\s*\)/g]
        : [
            /^\s*(?:import|export)\s[^;'"]*?\bfrom\s*["']([^"']+)["']/gm,
            /^\s*import\s*["']([^"']+)["']/gm,
            /\bimport\(\s*["']([^"']+)["']\s*\)/g,
            /\brequire\(\s*["']([^"']+)["']\s*\)/g,
          ];
      const specifiers = patterns.flatMap((p) => [...source.matchAll(p)].map((m) => m[1] as string));
      for (const spec of specifiers) {
        if (spec.startsWith(".")) {
          if (!existsSync(resolve(dirname(file), spec)))
            problems.push(`${relative(app, file)}: ${spec} is missing`);
          continue;
        }
        if (spec.startsWith("node:") || builtins.has(spec)) continue;
        seen.add(spec);
        const name = spec.startsWith("@")
          ? spec.split("/").slice(0, 2).join("/")
          : (spec.split("/")[0] as string);
        if (pkg.dependencies[name] === undefined)
          problems.push(`${relative(app, file)}: "${spec}" is not in dependencies`);
        else if (!existsSync(join(app, "node_modules", name))) problems.push(`${name} is not in the image`);
      }
    }
    assert.deepEqual(problems, []);
    // The scan reaches the packages the code is known to load, in both module systems.
    for (const name of ["@grpc/grpc-js", "pino", "protobufjs/light.js", "yaml", "chokidar", "undici"]) {
      assert.ok(seen.has(name), `the scan finds "${name}"`);
    }
  });

  test("every command's --help runs from the image's files", async () => {
    const top = await run(["--help"]);
    assert.equal(top.code, 0, top.stderr);
    // Every command osm-cert lists (so a command added later is covered without editing this test).
    const commands = [...top.stdout.matchAll(/^ {2}([a-z][a-z-]*) +\S/gm)].map((m) => m[1] as string);
    for (const expected of ["server", "agent", "issue", "envoy-bootstrap"])
      assert.ok(commands.includes(expected), expected);
    for (const command of commands) {
      // `issue` takes a kind before its flags.
      const args = command === "issue" ? ["issue", "bootstrap", "--help"] : [command, "--help"];
      const help = await run(args);
      assert.equal(help.code, 0, `${args.join(" ")}: ${help.stderr}`);
      assert.match(help.stdout, new RegExp(`^Usage: osm-cert ${command}`));
    }
  });

  test("envoy-bootstrap prints the fragment; the agent's code cache is accepted there", async () => {
    const result = await run(["envoy-bootstrap", "--sds-socket", "/var/run/osm-cert/sds/sds.sock"]);
    assert.equal(result.code, 0, result.stderr);
    const doc = parseYaml(result.stdout) as {
      bootstrap: { static_resources: { clusters: { name: string }[] } };
    };
    assert.equal(doc.bootstrap.static_resources.clusters[0]?.name, "osm-cert-sds");

    const probe = `import(${JSON.stringify(join(app, "dist/cli/agent-bundle.js"))}).then((m) => console.log(m.loadAgentBundle().cacheAccepted))`;
    const cache = await new Promise<string>((done, fail) =>
      // Under the injected container's NODE_OPTIONS, the flags the cache was made under.
      execFile(
        process.execPath,
        ["-e", probe],
        { cwd: root, env: { ...process.env, NODE_OPTIONS: AGENT_NODE_OPTIONS } },
        (error, stdout) => (error ? fail(error) : done(stdout)),
      ),
    );
    assert.equal(cache.trim(), "true", "V8 takes the shipped code cache");
  });

  test("content size: dist and production node_modules", (t) => {
    const dist = sizeOf(join(app, "dist"));
    const modules = sizeOf(join(app, "node_modules"));
    const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;
    t.diagnostic(`image content: dist ${mb(dist)} + node_modules ${mb(modules)} = ${mb(dist + modules)}`);
    // A budget that fails when a dev dependency or the tests slip into the image.
    assert.ok(dist + modules < 25 * 1024 * 1024, `${mb(dist + modules)} is over the 25 MB budget`);
    assert.equal(existsSync(join(app, "dist/test")), false);
    for (const dev of ["typescript", "esbuild", "@grpc/grpc-js-xds", "@peculiar/x509"]) {
      assert.equal(existsSync(join(app, "node_modules", dev)), false, `${dev} stays out`);
    }
  });
});
