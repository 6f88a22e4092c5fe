// Benchmarks (not tests): `npm run bench`, or `npm run bench -- --only <name>` for one figure.
// Every figure is reported next to a reference measured in the same run on the same machine
// (median and spread of --runs runs), because this machine is shared and absolute numbers drift.
//
//   signing  1  CSRs/s per core over gRPC+TLS (server pinned to one CPU) vs `openssl speed ecdsap256`
//   cores    2  every core (`--workers auto`) vs cfssl (`cfssl serve`, ECDSA CA) on the same cores
//   storm    3  10,000 identities, each on a new TLS connection with its own credential (bootstrap
//               certificate, then token with a TokenReview per identity against the fake API server)
//   agent    4-6 agent RSS after 100 rotations with 100 streams vs bare node; start -> first secret
//               vs `node -e 0`; a rotation's fan-out to 1,000 SDS streams
//   fanout   6  figure 6 alone (a fresh agent, 1,000 streams, 5 rotations per run)
//   profile  7  server RSS at rest and under figure 2's load; CPU split per CSR from --cpu-prof
//
// The load generator runs in a process of its own (bench/loadgen.ts); its CPU is reported apart.

import { mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { agentFigures } from "./agent-figures.js";
import { type Figure, killAll } from "./measure.js";
import {
  type CoresFigure,
  figureCores,
  figureProfile,
  figureSigning,
  figureStorm,
  type SigningFigure,
} from "./server-figures.js";

const NAMES = ["signing", "cores", "storm", "agent", "fanout", "profile"] as const;

const { values } = parseArgs({
  options: {
    only: { type: "string", multiple: true },
    runs: { type: "string", default: "3" },
    seconds: { type: "string", default: "5" },
    // Load before each pooled measurement (figures 1, 2, 7): until V8 has compiled the hot path.
    warmup: { type: "string", default: "12" },
    "storm-pods": { type: "string", default: "10000" },
    "storm-window": { type: "string", default: "500" },
    // The storm's credential kinds (bootstrap, token), its server's --workers, and a --cpu-prof split.
    "storm-mode": { type: "string", multiple: true },
    "storm-workers": { type: "string", default: "2" },
    "storm-profile": { type: "boolean", default: false },
    // Overrides the chart's NODE_OPTIONS for the agent ("" for none).
    "agent-node-options": { type: "string" },
  },
});
// `fanout` is part of `agent`; it runs on its own only when asked for.
const only = new Set(values.only ?? NAMES.filter((name) => name !== "fanout"));
for (const name of only) {
  if (!(NAMES as readonly string[]).includes(name)) {
    console.error(`--only ${name}: not one of ${NAMES.join(", ")}`);
    process.exit(2);
  }
}
for (const mode of values["storm-mode"] ?? []) {
  if (mode !== "bootstrap" && mode !== "token") {
    console.error(`--storm-mode ${mode}: not one of bootstrap, token`);
    process.exit(2);
  }
}
// Every process the bench starts runs as in a container, where NODE_EXTRA_CA_CERTS is not set: on a
// machine that sets it (this one: the system bundle, 144 certificates) every Node start parses it,
// ≈ 95 ms of CPU that inflated figure 5's reference (`node -e 0` 146 ms of CPU with it, 51 without).
delete process.env.NODE_EXTRA_CA_CERTS;
const dir = mkdtempSync(join(tmpdir(), "osm-cert-bench-"));
const options = {
  dir,
  runs: Math.max(1, Number(values.runs)),
  seconds: Number(values.seconds),
  warmupSeconds: Number(values.warmup),
  stormPods: Number(values["storm-pods"]),
  stormWindow: Number(values["storm-window"]),
  stormModes: values["storm-mode"] as ("bootstrap" | "token")[] | undefined,
  stormWorkers: values["storm-workers"],
  stormProfile: values["storm-profile"],
};

console.log(
  `osm-cert benchmarks ${new Date().toISOString()}, node ${process.version}, ${cpus().length} × ${cpus()[0]?.model ?? "?"}; ${options.runs} runs per figure`,
);
const figures: Figure[] = [];
let failed = false;
const step = async <T>(name: (typeof NAMES)[number], run: () => Promise<T>): Promise<T | null> => {
  if (!only.has(name)) return null;
  try {
    return await run();
  } catch (error) {
    failed = true;
    console.log(`!! ${name} failed: ${(error as Error).stack ?? error}`);
    killAll();
    return null;
  }
};
try {
  const perCore: SigningFigure | null = await step("signing", () => figureSigning(options));
  if (perCore !== null) figures.push(perCore.figure);
  const cores: CoresFigure | null = await step("cores", () => figureCores(options, perCore));
  if (cores !== null) figures.push(...cores.figures);
  figures.push(...((await step("storm", () => figureStorm(options))) ?? []));
  figures.push(
    ...((await step("agent", () =>
      agentFigures({ ...options, nodeOptions: values["agent-node-options"] }),
    )) ?? []),
  );
  if (!only.has("agent")) {
    figures.push(
      ...((await step("fanout", () =>
        agentFigures({ ...options, nodeOptions: values["agent-node-options"], fanoutOnly: true }),
      )) ?? []),
    );
  }
  figures.push(...((await step("profile", () => figureProfile(options, cores))) ?? []));
} finally {
  killAll();
  rmSync(dir, { recursive: true, force: true });
}

console.log("\n## summary (median (min–max, runs))");
console.log("| # | figure | measured | reference, same run | ratio | target | met |");
console.log("|---|---|---|---|---|---|---|");
for (const f of figures.sort((a, b) => a.n - b.n)) {
  console.log(
    `| ${f.n} | ${f.what} | ${f.measured} | ${f.reference} | ${f.ratio} | ${f.target} | ${f.met === null ? "–" : f.met ? "✔" : "✘"} |`,
  );
}
process.exitCode = failed ? 1 : 0;
