// Build step (after tsc and the proto compilers): bundles `osm-cert agent` into one file,
// dist/agent.bundle.cjs, plus V8's code cache for it (dist/agent.bundle.cjs.cache), both loaded by
// cli/agent-bundle.ts for the `agent` command (DESIGN.md §12: the agent's start-up time and memory
// are product features). One minified file instead of ~150 modules read, resolved, wrapped and
// compiled one by one, holding only the code the agent reaches from its own entry.
//
// - The input is tsc's output (dist/agent/main.js), so the bundle runs exactly the compiled code the
//   tests cover, and its source map chains back to the .ts sources.
// - CommonJS, run through node:vm by cli/agent-bundle.ts: that is what lets V8 take a code cache.
// - dist/common/flags.js is not bundled but handed in by the loader (`__osmCertShared`), so that
//   FlagError and HelpRequested thrown inside the bundle are the classes cli/main.ts checks.
// - `import.meta.url` in a bundled module keeps meaning that module's own location under dist/, so
//   proto/envoy-sds.ts and proto/signing-api.ts find their JSON next to them as before.
// - @grpc/proto-loader is required by grpc-js only inside channelz/ORCA, which the agent never uses:
//   left to a run-time require instead of pulling protobufjs' .proto parser into the bundle.
// - `WebAssembly` reads as undefined inside the bundle: `long` then uses its JS 64-bit arithmetic
//   instead of compiling a wasm module, which would bring in V8's wasm compiler (≈ 1 MB of RSS).
// - Dependencies' licence comments go to dist/agent.bundle.cjs.LEGAL.txt, not into the code in memory.
//
// `node scripts/bundle-agent.mjs --analyze` prints what the bundle is made of.

import { execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { dirname, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { analyzeMetafile, build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const dist = resolve(root, "dist");
const outfile = resolve(dist, "agent.bundle.cjs");
const entry = resolve(dist, "agent/main.js");
/** Files under dist/ the loader hands in, by the key cli/agent-bundle.ts uses. */
const shared = new Map([[resolve(dist, "common/flags.js"), "common/flags.js"]]);

/** A path from the bundle to a file under dist/, for new URL(..., <the bundle's URL>). */
const fromBundle = (file) => `./${relative(dirname(outfile), file).split(sep).join("/")}`;

/** @type {import("esbuild").Plugin} */
const agentBundle = {
  name: "osm-cert-agent-bundle",
  setup(b) {
    b.onResolve({ filter: /^\.\.?\// }, (args) => {
      const key = shared.get(resolve(args.resolveDir, args.path));
      return key === undefined ? undefined : { path: key, namespace: "osm-cert-shared" };
    });
    b.onLoad({ filter: /.*/, namespace: "osm-cert-shared" }, (args) => ({
      contents: `module.exports = __osmCertShared[${JSON.stringify(args.path)}];`,
      loader: "js",
    }));
    b.onLoad({ filter: /\.js$/ }, async (args) => {
      if (!args.path.startsWith(dist + sep)) return undefined;
      const source = await readFile(args.path, "utf8");
      if (!source.includes("import.meta.url")) return undefined;
      const own = `new URL(${JSON.stringify(fromBundle(args.path))}, require("node:url").pathToFileURL(__filename)).href`;
      return { contents: source.replaceAll("import.meta.url", own), loader: "js" };
    });
  },
};

const result = await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  platform: "node",
  format: "cjs",
  target: "node20",
  minify: true,
  keepNames: true,
  sourcemap: "linked",
  legalComments: "external",
  external: ["@grpc/proto-loader"],
  // The one user of WebAssembly in the bundle is `long` (via protobufjs), which compiles a tiny
  // module for 64-bit multiply/divide and falls back to plain JS when WebAssembly is missing. That
  // module alone makes V8 bring in its wasm compiler: ≈ 1 MB more RSS for the agent (figure 4).
  define: { WebAssembly: "undefined" },
  plugins: [agentBundle],
  logLevel: "warning",
  metafile: true,
});

// The code cache, made in a child process under the V8 flags the injected agent runs with (its
// NODE_OPTIONS, common/agent-node-options.js: V8 rejects a cache made under other flags), after an
// agent started from the bundle served its first secret (scripts/agent-code-cache.mjs), so that it
// holds everything a start-up compiles, not only the bundle's top level.
const { AGENT_NODE_OPTIONS } = await import(
  new URL("../dist/common/agent-node-options.js", import.meta.url).href
);
execFileSync(process.execPath, [fileURLToPath(new URL("./agent-code-cache.mjs", import.meta.url))], {
  stdio: ["ignore", "ignore", "inherit"],
  env: { ...process.env, NODE_OPTIONS: AGENT_NODE_OPTIONS },
});

if (process.argv.includes("--analyze")) console.log(await analyzeMetafile(result.metafile));
