// Renders helm/osm-cert as Helm would, with test/helm/render.go (Go's text/template + sprig +
// gojsonschema, the engines Helm itself uses) built once from Debian's packages. No helm binary can be
// installed here (issue 6); a missing toolchain is an error that says what to install, never a skip.
// Then installs the rendered objects into the fake API server as `helm install` would, and runs the
// real server with the chart's own args as the chart's ServiceAccount.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, copyFile, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { stringify } from "yaml";
import {
  KubeClient,
  type KubeObject,
  type ResourceType,
  StaticToken,
} from "../../server/kubernetes/client.js";
import type { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { type CliProcess, startServerProcess } from "./processes.js";

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

/** One rendered Kubernetes object. */
export type ChartObject = Record<string, unknown> & {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
};

export const CLUSTER_SCOPED = new Set(["ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"]);

// Helm's install order (pkg/releaseutil/kind_sorter.go); kinds it does not know go last.
const INSTALL_ORDER = [
  "NetworkPolicy",
  "PodDisruptionBudget",
  "ServiceAccount",
  "ClusterRole",
  "ClusterRoleBinding",
  "Role",
  "RoleBinding",
  "Service",
  "Deployment",
  "MutatingWebhookConfiguration",
];
const PLURALS: Record<string, string> = {
  ServiceAccount: "serviceaccounts",
  Service: "services",
  Deployment: "deployments",
  PodDisruptionBudget: "poddisruptionbudgets",
  Role: "roles",
  RoleBinding: "rolebindings",
  ClusterRole: "clusterroles",
  ClusterRoleBinding: "clusterrolebindings",
  NetworkPolicy: "networkpolicies",
  ServiceMonitor: "servicemonitors",
  MutatingWebhookConfiguration: "mutatingwebhookconfigurations",
};

export function typeOf(o: ChartObject): ResourceType<KubeObject> {
  const [group, version] = o.apiVersion.includes("/") ? o.apiVersion.split("/") : ["", o.apiVersion];
  const plural = PLURALS[o.kind];
  assert.ok(plural, `no resource known for kind ${o.kind}`);
  return {
    group: group ?? "",
    version: version ?? "",
    plural,
    kind: o.kind,
    namespaced: !CLUSTER_SCOPED.has(o.kind),
  };
}

export function inInstallOrder<T extends ChartObject>(objects: T[]): T[] {
  const rank = (o: ChartObject) =>
    INSTALL_ORDER.includes(o.kind) ? INSTALL_ORDER.indexOf(o.kind) : INSTALL_ORDER.length;
  return [...objects].sort((a, b) => rank(a) - rank(b));
}

/** A client of the fake API server logged in as the cluster admin who runs `helm install`. */
export function installerClient(fake: FakeKubeApiServer, namespace = "osm-system"): KubeClient {
  fake.addToken("installer-token", { username: "kubernetes-admin", groups: ["system:masters"] });
  return clientWithToken(fake, "installer-token", namespace);
}

/** A client of the fake API server with a token of `serviceAccount` in `namespace` (no retries). */
export function serviceAccountClient(
  fake: FakeKubeApiServer,
  serviceAccount: string,
  namespace = "osm-system",
): KubeClient {
  return clientWithToken(fake, fake.serviceAccountToken(namespace, serviceAccount), namespace);
}

function clientWithToken(fake: FakeKubeApiServer, token: string, namespace: string): KubeClient {
  return new KubeClient({
    config: {
      server: fake.url,
      caPem: fake.caPem,
      token: new StaticToken(token, "test"),
      namespace,
      source: "test",
    },
    retry: { maxAttempts: 1 },
  });
}

/** Creates `objects` in the fake API server as the installer, in Helm's install order. */
export async function installChart(
  fake: FakeKubeApiServer,
  objects: readonly ChartObject[],
  namespace = "osm-system",
): Promise<void> {
  const admin = installerClient(fake, namespace);
  try {
    for (const object of inInstallOrder([...objects])) {
      const type = typeOf(object);
      await admin.create(type, object as unknown as KubeObject, {
        ...(type.namespaced ? { namespace: object.metadata.namespace ?? namespace } : {}),
      });
    }
  } finally {
    await admin.close();
  }
}

/** The args of the chart's osm-cert Deployment, less the listen addresses (tests take free ports). */
export function chartServerArgs(objects: readonly ChartObject[]): string[] {
  const deployment = objects.find((o) => o.kind === "Deployment" && o.metadata.name === "osm-cert");
  assert.ok(deployment, "the chart renders the osm-cert Deployment");
  const [container] = (deployment.spec as { template: { spec: { containers: { args?: string[] }[] } } })
    .template.spec.containers;
  return (container?.args ?? []).filter((a) => a !== "server" && !/^--(admin-)?listen=/.test(a));
}

/**
 * The real server with `args` (the chart's), authenticated to the fake API server as the chart's
 * ServiceAccount through a kubeconfig written into `dir`.
 */
export async function startChartServer(
  fake: FakeKubeApiServer,
  args: readonly string[],
  dir: string,
  namespace = "osm-system",
): Promise<{ server: CliProcess; address: string }> {
  const kubeconfig = join(dir, "kubeconfig.json");
  const token = fake.serviceAccountToken(namespace, "osm-cert", {
    expiresAt: new Date(Date.now() + 86_400_000),
  });
  await writeFile(kubeconfig, fake.kubeconfig(token));
  const { server, address } = await startServerProcess(null, [
    ...args,
    // The test's client dials the loopback address, not the Service name the chart's SANs carry.
    "--server-san=127.0.0.1",
    "--kubeconfig",
    kubeconfig,
  ]);
  return { server, address };
}

/** `user` made every request in `needed` ("verb resource") and the chart's RBAC refused none (403). */
export function assertChartRbacSuffices(
  fake: FakeKubeApiServer,
  user: string,
  needed: readonly string[],
): void {
  const mine = fake.requests.filter((r) => r.user === user);
  const used = new Set(mine.map((r) => `${r.verb} ${r.resource}`));
  for (const request of needed)
    assert.ok(used.has(request), `the server never did "${request}": ${[...used].join(", ")}`);
  assert.deepEqual(
    mine
      .filter((r) => r.status === 403)
      .map((r) => `${r.verb} ${r.resource} ${r.namespace ?? ""}/${r.name ?? ""}`),
    [],
    "requests the chart's RBAC does not allow",
  );
}
