// Build step, run by scripts/bundle-agent.mjs under the injected agent's NODE_OPTIONS (V8 rejects a
// code cache made under other flags): makes dist/agent.bundle.cjs.cache, V8's code cache for the
// agent bundle, from a real start-up rather than from the bundle's top level alone.
//
// V8 compiles a function when it first runs. A cache made right after the top level holds only what
// the top level ran; everything an agent runs on its way to the first secret (flag parsing, the
// grpc-js client and server, TLS, protobufjs' reflection, the SDS answer) was then compiled at every
// start, on the critical path (README, Benchmarks: figure 5). So the bundle is loaded here, an agent
// is started from it against a throwaway signing server and CA, an SDS client asks for its secrets,
// and the cache is taken once the first answer arrived: it then holds what a start-up compiles.
// Nothing of this run is kept but the cache (compiled code; no key, certificate or address).
// If the run fails, the top-level cache is written instead, with a warning: slower starts, same agent.

import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { setFlagsFromString } from "node:v8";

const dist = new URL("../dist/", import.meta.url);
const CLI = new URL("cli/main.js", dist).pathname;
const { AGENT_BUNDLE_CACHE, loadAgentBundle } = await import(new URL("cli/agent-bundle.js", dist).href);

const { script, agent } = loadAgentBundle({ useCache: false });
const topLevel = script.createCachedData();
const TIMEOUT_MS = 60_000;
const NAMESPACE = "build";
const SERVICE_ACCOUNT = "code-cache";
// The server and `issue` run as plain Node: the flags matter only in this process.
const plainEnv = { ...process.env, NODE_OPTIONS: "" };
// The throwaway server is reached at 127.0.0.1, for which Node warns (DEP0123) that TLS sends no
// server name for an IP address; at every build that would read like a problem, and it is none here.
process.noDeprecation = true;

/** Starts a signing server on free loopback ports; resolves with it and its address. */
async function startServer(caDir) {
  const server = spawn(
    process.execPath,
    [CLI, "server", "--ca-dir", caDir, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
    { stdio: ["ignore", "pipe", "inherit"], env: plainEnv },
  );
  const exited = once(server, "exit").then(([code]) => {
    throw new Error(`the signing server exited (${code}) before it started`);
  });
  const started = (async () => {
    for await (const line of createInterface({ input: server.stdout })) {
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        continue;
      }
      if (event.event === "server.started") return String(event.address);
    }
    throw new Error("the signing server closed its output before it started");
  })();
  try {
    return { server, address: await Promise.race([started, exited]) };
  } catch (error) {
    server.kill("SIGKILL");
    throw error;
  } finally {
    exited.catch(() => {});
  }
}

/** An SDS client as Envoy is one, on the unbundled modules: asks for both secrets, waits for an answer. */
async function firstSecret(socket) {
  const grpc = await import("@grpc/grpc-js");
  const sds = await import(new URL("proto/envoy-sds.js", dist).href);
  const Client = grpc.makeGenericClientConstructor(sds.secretDiscoveryServiceDefinition(), "Sds");
  const client = new Client(`unix:${socket}`, grpc.credentials.createInsecure());
  try {
    const call = client.StreamSecrets();
    const answered = new Promise((resolve, reject) => {
      call.on("data", resolve);
      call.on("error", reject);
    });
    call.write({ type_url: sds.SECRET_TYPE_URL, resource_names: ["default", "ROOTCA"] });
    await answered;
    call.cancel();
  } finally {
    client.close();
  }
}

async function warmStart(dir) {
  const { server, address } = await startServer(join(dir, "ca"));
  try {
    const boot = join(dir, "boot");
    const ca = ["--ca-dir", join(dir, "ca")];
    execFileSync(
      process.execPath,
      [
        CLI,
        "issue",
        "bootstrap",
        "--namespace",
        NAMESPACE,
        "--service-account",
        SERVICE_ACCOUNT,
        ...ca,
        "--out",
        boot,
      ],
      { stdio: ["ignore", "ignore", "inherit"], env: plainEnv },
    );
    const socket = join(dir, "sds.sock");
    // The agent as the container runs it (its log goes to this process's stdout, which is dropped).
    const running = agent.agentCommand([
      "--server",
      address,
      "--ca-bundle",
      join(boot, "ca.crt"),
      "--namespace",
      NAMESPACE,
      "--service-account",
      SERVICE_ACCOUNT,
      "--bootstrap-cert",
      join(boot, "tls.crt"),
      "--bootstrap-key",
      join(boot, "tls.key"),
      "--sds-socket",
      socket,
      "--admin-listen",
      "127.0.0.1:0",
    ]);
    const failed = running.then(() => {
      throw new Error("the agent stopped");
    });
    const served = (async () => {
      while (!existsSync(socket)) await sleep(5);
      await firstSecret(socket);
    })();
    await Promise.race([served, failed]);
  } finally {
    server.kill("SIGKILL");
  }
}

const dir = await mkdtemp(join(tmpdir(), "osm-cert-code-cache-"));
let cache = topLevel;
try {
  const timeout = sleep(TIMEOUT_MS, undefined, { ref: false }).then(() => {
    throw new Error(`no first secret within ${TIMEOUT_MS} ms`);
  });
  await Promise.race([warmStart(dir), timeout]);
  // The agent turned Sparkplug off at run time (agent/v8-tiers.ts); V8 stamps a cache with the
  // flags in force when it is made and rejects it under others, and an agent loads its bundle
  // before it turns the flag off: the cache is made under the flags the agent loads with.
  setFlagsFromString("--sparkplug");
  cache = script.createCachedData();
} catch (error) {
  process.stderr.write(
    `bundle-agent: WARNING: the agent's start-up could not be run (${error.message}); ` +
      "its code cache covers the bundle's top level only (slower agent start-up)\n",
  );
}
await writeFile(AGENT_BUNDLE_CACHE, cache);
await rm(dir, { recursive: true, force: true });
process.stderr.write(
  `bundle-agent: code cache ${cache.length} bytes (${cache === topLevel ? "top level" : "after a start-up"})\n`,
);
// The agent started above would keep the process alive.
process.exit(0);
