// Kubeconfigs with exec credential plugins (issue 9, Deliver 5), as EKS, GKE and AKS hand them out,
// against the fake API server over real HTTPS, with a real plugin process (a small node script):
// its token is used and fetched again once its expirationTimestamp passes and after a 401; the
// kubeconfig's args and env reach it, KUBERNETES_EXEC_INFO carries spec.interactive and (with
// provideClusterInfo) the cluster; a v1beta1 plugin answering with a client certificate works; a
// failing, missing or confused plugin, or one that insists on a terminal, gives a clear error; and
// `osm-cert renew` runs with such a kubeconfig.

import assert from "node:assert/strict";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CONFIG_MAPS, KubeClient, KubeConfigError, loadKubeconfig } from "../../server/kubernetes/client.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { tempDir } from "../helpers/pki.js";
import { runCli } from "../helpers/processes.js";

const dir = await tempDir();
let fake: FakeKubeApiServer;

// The plugin: counts its runs, records what it was given, answers from a control file.
const PLUGIN = `#!/usr/bin/env node
import { readFileSync, writeFileSync, appendFileSync } from "node:fs";
const here = new URL(".", import.meta.url).pathname;
const control = JSON.parse(readFileSync(here + "control.json", "utf8"));
let runs = 0;
try { runs = Number(readFileSync(here + "runs", "utf8")); } catch {}
runs += 1;
writeFileSync(here + "runs", String(runs));
appendFileSync(here + "seen.jsonl", JSON.stringify({
  args: process.argv.slice(2), region: process.env.PLUGIN_REGION, info: JSON.parse(process.env.KUBERNETES_EXEC_INFO),
}) + "\\n");
if (control.fail) { process.stderr.write(control.fail + "\\n"); process.exit(1); }
if (control.garbage) { process.stdout.write("Please log in at https://example.invalid\\n"); process.exit(0); }
const status = control.cert
  ? { clientCertificateData: control.cert, clientKeyData: control.key }
  : { token: "tok-" + runs };
if (control.expiresInMs !== undefined) status.expirationTimestamp = new Date(Date.now() + control.expiresInMs).toISOString();
process.stdout.write(JSON.stringify({ apiVersion: control.apiVersion, kind: "ExecCredential", status }));
`;

before(async () => {
  fake = await FakeKubeApiServer.start({ namespaces: ["osm-system"] });
  for (let i = 1; i <= 20; i++)
    fake.addToken(`tok-${i}`, { username: "operator", groups: ["system:masters"] });
});
after(async () => {
  await fake.close();
  await dir.remove();
});

interface Plugin {
  kubeconfig: string;
  control(value: Record<string, unknown>): Promise<void>;
  runs(): Promise<number>;
  seen(): Promise<{ args: string[]; region?: string; info: Record<string, unknown> }[]>;
}

/** A kubeconfig (YAML, as EKS writes it) whose user runs the plugin, in its own directory. */
async function plugin(name: string, exec: Record<string, unknown>): Promise<Plugin> {
  const home = join(dir.path, name);
  await import("node:fs/promises").then((fs) => fs.mkdir(home, { recursive: true }));
  await writeFile(join(home, "plugin.mjs"), PLUGIN);
  await chmod(join(home, "plugin.mjs"), 0o755);
  const base = JSON.parse(fake.kubeconfig("unused")) as {
    clusters: { cluster: Record<string, unknown> }[];
    users: { user: Record<string, unknown> }[];
  };
  (base.clusters[0] as { cluster: Record<string, unknown> }).cluster.extensions = [
    { name: "client.authentication.k8s.io/exec", extension: { audience: "osm-test" } },
  ];
  (base.users[0] as { user: Record<string, unknown> }).user = { exec: { command: "./plugin.mjs", ...exec } };
  const kubeconfig = join(home, "kubeconfig.json");
  await writeFile(kubeconfig, JSON.stringify(base));
  return {
    kubeconfig,
    control: (value) => writeFile(join(home, "control.json"), JSON.stringify(value)),
    runs: async () => Number(await readFile(join(home, "runs"), "utf8").catch(() => "0")),
    seen: async () =>
      (await readFile(join(home, "seen.jsonl"), "utf8").catch(() => ""))
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
  };
}

const V1 = "client.authentication.k8s.io/v1";
const V1BETA1 = "client.authentication.k8s.io/v1beta1";

test("a v1 token plugin: args, env and cluster info reach it; its token is fetched again on expiry and after a 401", async () => {
  const p = await plugin("token", {
    apiVersion: V1,
    args: ["eks", "get-token", "--cluster-name", "prod"],
    env: [{ name: "PLUGIN_REGION", value: "eu-west-1" }],
    interactiveMode: "Never",
    provideClusterInfo: true,
  });
  // Valid for 11 s: with the client's 10 s of slack, stale after about one.
  await p.control({ apiVersion: V1, expiresInMs: 11_000 });
  const client = new KubeClient({ config: await loadKubeconfig(p.kubeconfig) });
  try {
    await client.get(CONFIG_MAPS, "absent", { namespace: "osm-system" }).catch(() => undefined);
    assert.equal(await p.runs(), 1, "run once at load, cached for the request");
    const [first] = await p.seen();
    assert.deepEqual(first?.args, ["eks", "get-token", "--cluster-name", "prod"]);
    assert.equal(first?.region, "eu-west-1");
    assert.equal(first?.info.kind, "ExecCredential");
    assert.equal(first?.info.apiVersion, V1);
    const spec = first?.info.spec as { interactive: boolean; cluster: Record<string, unknown> };
    assert.equal(spec.interactive, false);
    assert.equal(spec.cluster.server, fake.url);
    assert.equal(
      Buffer.from(spec.cluster["certificate-authority-data"] as string, "base64").toString(),
      fake.caPem,
    );
    assert.deepEqual(spec.cluster.config, { audience: "osm-test" });

    // Expired: the next request runs the plugin again and uses the new token.
    await sleep(1_500);
    await p.control({ apiVersion: V1 });
    const usersBefore = fake.requests.length;
    await client.get(CONFIG_MAPS, "absent", { namespace: "osm-system" }).catch(() => undefined);
    assert.equal(await p.runs(), 2, "re-run once the token expired");
    assert.equal(fake.requests.slice(usersBefore).at(-1)?.status, 404, "the fresh token was accepted");

    // The API server refuses the token it holds (no expiry given): one 401, a re-run, then success.
    fake.revokeToken("tok-2");
    const map = await client.create(
      CONFIG_MAPS,
      { metadata: { name: "after-401", namespace: "osm-system" }, data: {} },
      { namespace: "osm-system" },
    );
    assert.equal(map.metadata?.name, "after-401");
    assert.equal(await p.runs(), 3, "re-run after the 401");
    const statuses = fake.requests
      .filter((r) => r.path.includes("/configmaps") && r.method === "POST")
      .map((r) => r.status);
    assert.deepEqual(statuses, [401, 201]);
  } finally {
    await client.close();
  }
});

test("a v1beta1 plugin answering with a client certificate (interactiveMode defaults to IfAvailable)", async () => {
  const p = await plugin("cert", { apiVersion: V1BETA1 });
  const { certPem, keyPem } = await fake.issueClientCertificate("cert-operator", "system:masters");
  await p.control({ apiVersion: V1BETA1, cert: certPem, key: keyPem, expiresInMs: 3_600_000 });
  const config = await loadKubeconfig(p.kubeconfig);
  const client = new KubeClient({ config });
  try {
    await client.create(
      CONFIG_MAPS,
      { metadata: { name: "by-cert", namespace: "osm-system" }, data: {} },
      { namespace: "osm-system" },
    );
    assert.equal(fake.requests.at(-1)?.user, "cert-operator");
    const [seen] = await p.seen();
    // No terminal here: IfAvailable runs it non-interactively, and no cluster info was asked for.
    assert.deepEqual(seen?.info.spec, { interactive: false });
  } finally {
    await client.close();
  }
});

test("a failing, missing or confused plugin, or one that needs a terminal, gives a clear error", async () => {
  const failing = await plugin("failing", { apiVersion: V1, interactiveMode: "Never" });
  await failing.control({ apiVersion: V1, fail: "error: SSO session expired; run `aws sso login`" });
  await assert.rejects(
    loadKubeconfig(failing.kubeconfig),
    (e: unknown) =>
      e instanceof KubeConfigError &&
      /exec credential plugin .*plugin\.mjs .* exited with code 1: error: SSO session expired; run `aws sso login`/.test(
        e.message,
      ),
  );

  const garbage = await plugin("garbage", { apiVersion: V1, interactiveMode: "Never" });
  await garbage.control({ apiVersion: V1, garbage: true });
  await assert.rejects(loadKubeconfig(garbage.kubeconfig), /answered something that is not JSON/);

  const wrongVersion = await plugin("wrong-version", { apiVersion: V1, interactiveMode: "Never" });
  await wrongVersion.control({ apiVersion: V1BETA1 });
  await assert.rejects(
    loadKubeconfig(wrongVersion.kubeconfig),
    /apiVersion .*v1beta1.*asked for client\.authentication\.k8s\.io\/v1$/,
  );

  const missing = await plugin("missing", {
    apiVersion: V1,
    command: "osm-cert-no-such-plugin",
    interactiveMode: "Never",
    installHint: "install it with: brew install no-such-plugin",
  });
  await assert.rejects(
    loadKubeconfig(missing.kubeconfig),
    /command not found; install it with: brew install no-such-plugin/,
  );

  const terminal = await plugin("terminal", { apiVersion: V1, interactiveMode: "Always" });
  await terminal.control({ apiVersion: V1 });
  await assert.rejects(loadKubeconfig(terminal.kubeconfig), /needs a terminal \(interactiveMode: Always\)/);
  assert.equal(await terminal.runs(), 0, "not started without one");

  const noMode = await plugin("no-mode", { apiVersion: V1 });
  await assert.rejects(
    loadKubeconfig(noMode.kubeconfig),
    /interactiveMode must be Never, IfAvailable or Always/,
  );
  const alpha = await plugin("alpha", { apiVersion: "client.authentication.k8s.io/v1alpha1" });
  await assert.rejects(loadKubeconfig(alpha.kubeconfig), /v1alpha1.* is not supported/);
});

test("osm-cert renew runs with an exec kubeconfig; a failing plugin fails it with the plugin's words", async () => {
  const p = await plugin("cli", { apiVersion: V1, interactiveMode: "IfAvailable" });
  await p.control({ apiVersion: V1 });
  const ok = await runCli(["renew", "--all", "--kubeconfig", p.kubeconfig, "--osm-namespace", "osm-system"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.ok(
    await fake.requests.some((r) => r.resource === "configmaps" && r.method === "POST" && r.status === 201),
  );
  await p.control({ apiVersion: V1, fail: "token for prod expired" });
  // The cached token lives in the other process; this run starts the plugin again and it fails.
  const failed = await runCli(["renew", "--all", "--kubeconfig", p.kubeconfig]);
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /exited with code 1: token for prod expired/);
});
