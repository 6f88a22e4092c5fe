// helm/osm-cert rendered with Helm's engines (test/helpers/helm.ts) for every backend and for bad
// values; every object checked against the Kubernetes OpenAPI schemas (kubernetes-models), the RBAC
// compared with README's table, the hardening pinned down, and the whole install applied to the
// fake API server over HTTPS with the project's KubeClient (issue 6, first "Done when" bullet).

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { MutatingWebhookConfiguration } from "kubernetes-models/admissionregistration.k8s.io/v1";
import { Deployment } from "kubernetes-models/apps/v1";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import {
  ClusterRole,
  ClusterRoleBinding,
  Role,
  RoleBinding,
} from "kubernetes-models/rbac.authorization.k8s.io/v1";
import { Service, ServiceAccount } from "kubernetes-models/v1";
import { isMap, parseAllDocuments, parseDocument, type YAMLMap } from "yaml";
import { type FlagError, parseFlags } from "../../common/flags.js";
import { generateKeyPair } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { createCsr } from "../../common/x509/csr.js";
import { SERVER_FLAGS } from "../../server/flags.js";
import {
  isAlreadyExists,
  KubeApiError,
  type KubeClient,
  type KubeObject,
  type ResourceType,
  SECRETS,
} from "../../server/kubernetes/client.js";
import { WEBHOOK_FLAGS } from "../../webhook/flags.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import {
  assertChartRbacSuffices,
  type ChartObject,
  CLUSTER_SCOPED,
  chartServerArgs,
  inInstallOrder,
  installChart,
  installerClient,
  type RenderOptions,
  renderChart,
  serviceAccountClient,
  startChartServer,
  typeOf,
} from "../helpers/helm.js";
import { tempDir } from "../helpers/pki.js";
import type { CliProcess } from "../helpers/processes.js";
import { TestSigningClient } from "../helpers/signing-client.js";

type Obj = ChartObject;

const NS = "osm-system";
const SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor";

// The configurations a user installs: one per backend (two for cert-manager's issuer kinds).
// The webhook runs with Tresor only for now (its serving certificate comes from Tresor's root).
const BACKENDS = {
  tresor: {},
  vault: {
    certificateProvider: { kind: "vault" },
    vault: { secret: { name: "osm-vault-token", key: "token" }, caSecret: { name: "vault-ca" } },
    webhook: { enabled: false },
  },
  "cert-manager/Issuer": { certificateProvider: { kind: "cert-manager" }, webhook: { enabled: false } },
  "cert-manager/ClusterIssuer": {
    certificateProvider: { kind: "cert-manager" },
    certmanager: { issuerName: "mesh-root", issuerKind: "ClusterIssuer", issuerGroup: "cert-manager.io" },
    webhook: { enabled: false },
  },
} as const satisfies Record<string, Record<string, unknown>>;
type Backend = keyof typeof BACKENDS;

// Everything optional switched on, to check those templates too.
const EVERYTHING: RenderOptions = {
  values: [
    {
      serviceMonitor: { enabled: true, labels: { release: "prometheus" } },
      networkPolicy: {
        enabled: true,
        metricsFrom: [
          { namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } },
        ],
      },
      webhook: { objectSelector: { matchExpressions: [{ key: "osm-cert/skip", operator: "DoesNotExist" }] } },
      imagePullSecrets: [{ name: "regcred" }],
    },
  ],
  apiVersions: [SERVICE_MONITOR_API],
};

// kubernetes-models validates against the Kubernetes OpenAPI schemas; ServiceMonitor has no model.
const MODELS: Record<string, (o: Obj) => { validate(): void }> = {
  "v1/ServiceAccount": (o) => new ServiceAccount(o as never),
  "v1/Service": (o) => new Service(o as never),
  "apps/v1/Deployment": (o) => new Deployment(o as never),
  "policy/v1/PodDisruptionBudget": (o) => new PodDisruptionBudget(o as never),
  "rbac.authorization.k8s.io/v1/Role": (o) => new Role(o as never),
  "rbac.authorization.k8s.io/v1/RoleBinding": (o) => new RoleBinding(o as never),
  "rbac.authorization.k8s.io/v1/ClusterRole": (o) => new ClusterRole(o as never),
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": (o) => new ClusterRoleBinding(o as never),
  "networking.k8s.io/v1/NetworkPolicy": (o) => new NetworkPolicy(o as never),
  "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration": (o) =>
    new MutatingWebhookConfiguration(o as never),
};

async function render(options: RenderOptions = {}): Promise<Obj[]> {
  const result = await renderChart(options);
  if (!result.ok) assert.fail(`the chart did not render:\n${result.error}`);
  const objects: Obj[] = [];
  for (const [template, text] of Object.entries(result.manifests)) {
    for (const doc of parseAllDocuments(text)) {
      assert.deepEqual(doc.errors, [], `${template}: not valid YAML`);
      const value = doc.toJS() as Obj | null;
      if (value !== null) objects.push(value);
    }
  }
  return objects;
}

async function renderError(options: RenderOptions): Promise<string> {
  const result = await renderChart(options);
  assert.equal(result.ok, false, "the chart rendered although it should have refused these values");
  return result.ok ? "" : result.error;
}

const find = (objects: Obj[], kind: string, name: string): Obj => {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  assert.ok(
    found,
    `no ${kind} ${name} among ${objects.map((o) => `${o.kind}/${o.metadata.name}`).join(", ")}`,
  );
  return found;
};

function checkObjects(objects: Obj[]): void {
  assert.ok(objects.length > 0);
  const seen = new Set<string>();
  for (const object of objects) {
    const id = `${object.kind}/${object.metadata?.name}`;
    const key = `${object.apiVersion}/${object.kind}`;
    assert.ok(!seen.has(`${key}/${object.metadata.name}`), `${id} rendered twice`);
    seen.add(`${key}/${object.metadata.name}`);
    if (key === `${SERVICE_MONITOR_API}`) {
      // monitoring.coreos.com/v1 ServiceMonitor: spec.selector is required; each endpoint names a port.
      const spec = object.spec as { selector?: object; endpoints?: { port?: string }[] };
      assert.equal(typeof spec.selector, "object", `${id}: spec.selector`);
      assert.ok(
        spec.endpoints?.length && spec.endpoints.every((e) => typeof e.port === "string"),
        `${id}: endpoints`,
      );
    } else {
      const model = MODELS[key];
      assert.ok(model, `${id}: ${key} is not a kind this chart is expected to render`);
      assert.doesNotThrow(() => model(object).validate(), `${id} fails the Kubernetes OpenAPI schema`);
    }
    if (CLUSTER_SCOPED.has(object.kind)) assert.equal(object.metadata.namespace, undefined, id);
    else assert.equal(object.metadata.namespace, NS, `${id}: in the release namespace`);
    const labels = object.metadata.labels ?? {};
    assert.equal(labels["app.kubernetes.io/name"], "osm-cert", `${id}: labels`);
    assert.equal(labels["app.kubernetes.io/managed-by"], "Helm", `${id}: labels`);
    assert.equal(labels["app.kubernetes.io/instance"], "osm-cert", `${id}: labels`);
  }
}

// ----- RBAC: README's table against the rendered Roles and ClusterRoles -------------------------

/** One permission: who, where, what. */
type Grant = string;
const grant = (subject: string, scope: string, group: string, resource: string, verb: string, name: string) =>
  `${subject} ${scope} ${group === "" ? '""' : group}/${resource} ${verb}${name ? ` [${name}]` : ""}`;

function lookup(values: Record<string, unknown>, path: string): string {
  let current: unknown = values;
  for (const part of path.split(".")) current = (current as Record<string, unknown> | undefined)?.[part];
  assert.equal(
    typeof current,
    "string",
    `README names value <${path}>, which the chart's values do not have`,
  );
  return current as string;
}

/** README's RBAC table for a backend, `<value>` cells resolved against the values the chart used. */
function readmeGrants(backend: Backend, values: Record<string, unknown>): Set<Grant> {
  const readme = readFileSync(fileURLToPath(new URL("../../../README.md", import.meta.url)), "utf8");
  const lines = readme.split("\n");
  const header = lines.findIndex((l) => /^\|\s*subject\s*\|\s*feature\s*\|\s*API group\s*\|/.test(l));
  assert.ok(header >= 0, "README has no RBAC table (| subject | feature | API group | …)");
  const cell = (text: string) => {
    const t = text.trim().replace(/^`|`$/g, "");
    if (t === '""') return "";
    // A placeholder may stand alone or inside a name (`<caBundleSecretName>-rotation`).
    return t.replace(/<([A-Za-z0-9.]+)>/g, (_, path: string) => lookup(values, path));
  };
  const grants = new Set<Grant>();
  for (const line of lines.slice(header + 2)) {
    if (!line.startsWith("|")) break;
    const cells = line.split("|").slice(1, -1);
    assert.equal(cells.length, 8, `README RBAC row has ${cells.length} cells: ${line}`);
    const [subject, , group, resource, verbs, names, scope, backends] = cells.map((c) => c.trim());
    const applies = (backends ?? "").split(",").some((b) => {
      const token = b.trim();
      return token === "all" || token === backend || backend.startsWith(`${token}/`);
    });
    if (!applies) continue;
    const resourceNames = (names ?? "").trim() === "" ? [""] : (names ?? "").split(",").map(cell);
    for (const verb of (verbs ?? "").split(",").map((v) => v.trim()))
      for (const name of resourceNames)
        grants.add(grant(subject ?? "", scope ?? "", cell(group ?? ""), cell(resource ?? ""), verb, name));
  }
  return grants;
}

function renderedGrants(objects: Obj[]): Set<Grant> {
  const subjects: Record<string, string> = { "osm-cert": "server", "osm-cert-webhook": "webhook" };
  const grants = new Set<Grant>();
  for (const binding of objects.filter((o) => o.kind === "RoleBinding" || o.kind === "ClusterRoleBinding")) {
    const roleRef = binding.roleRef as { kind: string; name: string };
    const role = find(objects, roleRef.kind, roleRef.name);
    if (binding.kind === "RoleBinding") assert.equal(role.metadata.namespace, binding.metadata.namespace);
    const bound = binding.subjects as { kind: string; name: string; namespace: string }[];
    assert.equal(bound.length, 1, `${binding.metadata.name}: one subject`);
    const [sa] = bound;
    assert.equal(sa?.kind, "ServiceAccount");
    assert.equal(sa?.namespace, NS);
    find(objects, "ServiceAccount", sa?.name ?? "");
    const subject = subjects[sa?.name ?? ""];
    assert.ok(subject, `RBAC bound to an unexpected ServiceAccount ${sa?.name}`);
    const rules = role.rules as {
      apiGroups: string[];
      resources: string[];
      verbs: string[];
      resourceNames?: string[];
    }[];
    for (const rule of rules) {
      for (const group of rule.apiGroups)
        for (const resource of rule.resources)
          for (const verb of rule.verbs)
            for (const name of rule.resourceNames ?? [""]) {
              assert.ok(
                verb !== "*" && resource !== "*" && group !== "*",
                `wildcard in ${role.metadata.name}`,
              );
              grants.add(grant(subject, roleRef.kind, group, resource, verb, name));
            }
    }
  }
  // Every Role the chart renders is bound (an unbound Role would be dead weight or a typo).
  for (const role of objects.filter((o) => o.kind === "Role" || o.kind === "ClusterRole")) {
    assert.ok(
      objects.some(
        (o) =>
          (o.kind === "RoleBinding" || o.kind === "ClusterRoleBinding") &&
          (o.roleRef as { name: string }).name === role.metadata.name,
      ),
      `${role.kind} ${role.metadata.name} is not bound`,
    );
  }
  return grants;
}

/** The values the chart saw: values.yaml under the overrides (enough for the names README refers to). */
function effectiveValues(overrides: Record<string, unknown>): Record<string, unknown> {
  const merge = (base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> => {
    const out = { ...base };
    for (const [k, v] of Object.entries(over)) {
      const b = out[k];
      out[k] =
        v && typeof v === "object" && !Array.isArray(v) && b && typeof b === "object"
          ? merge(b as Record<string, unknown>, v as Record<string, unknown>)
          : v;
    }
    return out;
  };
  const text = readFileSync(
    fileURLToPath(new URL("../../../helm/osm-cert/values.yaml", import.meta.url)),
    "utf8",
  );
  const defaults = parseAllDocuments(text)[0]?.toJS() as Record<string, unknown>;
  return merge(defaults, overrides);
}

// Flags the chart passes that the server on this branch does not know yet: they arrive with the
// Vault backend (issue 7). Kept as a short explicit list so that any other unknown flag fails.
const AWAITING_ISSUE_7 = new Set([
  "vault-port",
  "vault-pki-mount",
  "vault-token-secret-name",
  "vault-token-secret-key",
  "vault-ca-file",
]);

describe("Helm chart helm/osm-cert", () => {
  for (const [backend, values] of Object.entries(BACKENDS) as [Backend, Record<string, unknown>][]) {
    describe(`backend ${backend}`, () => {
      let objects: Obj[];
      before(async () => {
        objects = await render({ values: [values] });
      });

      test("every document is valid YAML, a known kind, and passes the Kubernetes OpenAPI schema", () => {
        checkObjects(objects);
        const kinds = new Set(objects.map((o) => o.kind));
        for (const kind of [
          "Deployment",
          "Service",
          "ServiceAccount",
          "PodDisruptionBudget",
          "Role",
          "ClusterRole",
        ])
          assert.ok(kinds.has(kind), `no ${kind} rendered`);
        assert.equal(
          kinds.has("MutatingWebhookConfiguration"),
          backend === "tresor",
          "the webhook: Tresor only",
        );
        // Optional objects stay off by default.
        assert.ok(!kinds.has("ServiceMonitor") && !kinds.has("NetworkPolicy"));
      });

      test("RBAC is exactly README's table for this backend", () => {
        const expected = readmeGrants(backend, effectiveValues(values));
        const actual = renderedGrants(objects);
        const missing = [...expected].filter((g) => !actual.has(g));
        const extra = [...actual].filter((g) => !expected.has(g));
        assert.deepEqual(
          { missing, extra },
          { missing: [], extra: [] },
          "chart RBAC and README table differ",
        );
        assert.ok(actual.size > 0);
      });

      test("the server's args are flags `osm-cert server` accepts, with this backend's settings", () => {
        const container = (find(objects, "Deployment", "osm-cert").spec as PodTemplateOwner).template.spec
          .containers[0];
        const [command, ...args] = container?.args ?? [];
        assert.equal(command, "server");
        const unknown = args.map((a) => /^--([^=]+)/.exec(a)?.[1] ?? a).filter((f) => !(f in SERVER_FLAGS));
        assert.deepEqual(
          unknown.filter((f) => !AWAITING_ISSUE_7.has(f)),
          [],
          "flags the server does not know",
        );
        const known = args.filter((a) => (/^--([^=]+)/.exec(a)?.[1] ?? "") in SERVER_FLAGS);
        let flags: ReturnType<typeof parseFlags<typeof SERVER_FLAGS>>;
        try {
          flags = parseFlags("server", SERVER_FLAGS, known, {});
        } catch (error) {
          assert.fail(`the server would refuse the chart's args: ${(error as FlagError).message}`);
        }
        assert.equal(flags["certificate-manager"], backend.split("/")[0]);
        assert.equal(flags.listen, "0.0.0.0:15443");
        assert.equal(flags["admin-listen"], "0.0.0.0:9091");
        assert.equal(flags["osm-namespace"], NS);
        assert.equal(flags["service-cert-validity-duration"], 24 * 3600 * 1000);
        assert.deepEqual(flags["server-san"], [
          "osm-cert.osm-system.svc",
          "osm-cert.osm-system.svc.cluster.local",
          "osm-cert.osm-system",
        ]);
        if (backend === "vault") {
          assert.ok(args.includes("--vault-token-secret-name=osm-vault-token"), args.join(" "));
          assert.ok(args.includes("--vault-token-secret-key=token"));
          // Vault's private CA: a Secret the kubelet mounts, passed by path.
          assert.ok(args.includes("--vault-ca-file=/etc/osm-cert/vault-ca/ca.crt"), args.join(" "));
          const pod = (find(objects, "Deployment", "osm-cert").spec as PodTemplateOwner).template
            .spec as unknown as {
            volumes: { name: string; secret?: { secretName: string } }[];
            containers: { volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[] }[];
          };
          assert.deepEqual(pod.volumes.find((v) => v.name === "vault-ca")?.secret?.secretName, "vault-ca");
          assert.deepEqual(
            pod.containers[0]?.volumeMounts.find((m) => m.name === "vault-ca"),
            {
              name: "vault-ca",
              mountPath: "/etc/osm-cert/vault-ca",
              readOnly: true,
            },
          );
          assert.ok(!args.some((a) => a.startsWith("--vault-token=")), "never a token on the command line");
        } else assert.ok(!args.some((a) => a.startsWith("--vault-")));
        if (backend.startsWith("cert-manager")) {
          const cm = effectiveValues(values).certmanager as Record<string, string>;
          assert.equal(flags["cert-manager-issuer-name"], cm.issuerName);
          assert.equal(flags["cert-manager-issuer-kind"], cm.issuerKind);
          assert.ok(args.includes(`--cert-manager-issuer-group=${cm.issuerGroup}`));
        } else assert.ok(!args.some((a) => a.startsWith("--cert-manager-")));
      });
    });
  }

  interface Container {
    name: string;
    args?: string[];
    ports?: { name: string; containerPort: number }[];
    readinessProbe?: { httpGet?: { path: string; port: string | number } };
    livenessProbe?: { httpGet?: { path: string; port: string | number } };
    resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
    securityContext?: Record<string, unknown>;
  }
  interface PodTemplateOwner {
    replicas: number;
    selector: { matchLabels: Record<string, string> };
    template: {
      metadata: { labels: Record<string, string> };
      spec: {
        containers: Container[];
        securityContext?: Record<string, unknown>;
        affinity?: unknown;
        serviceAccountName: string;
      };
    };
  }

  describe("hardening and wiring (default values)", () => {
    let objects: Obj[];
    before(async () => {
      objects = await render();
    });

    for (const [name, adminPort, componentPorts] of [
      ["osm-cert", 9091, { grpc: 15443, metrics: 9091 }],
      ["osm-cert-webhook", 9092, { https: 9443, metrics: 9092 }],
    ] as const) {
      test(`${name}: 2 spread replicas, PDB, probes on the admin port, resources, locked-down securityContext`, () => {
        const spec = find(objects, "Deployment", name).spec as PodTemplateOwner;
        assert.equal(spec.replicas, 2);
        assert.equal(spec.template.spec.serviceAccountName, name);
        for (const [k, v] of Object.entries(spec.selector.matchLabels))
          assert.equal(spec.template.metadata.labels[k], v);
        assert.deepEqual(spec.template.spec.affinity, {
          podAntiAffinity: {
            preferredDuringSchedulingIgnoredDuringExecution: [
              {
                weight: 100,
                podAffinityTerm: {
                  topologyKey: "kubernetes.io/hostname",
                  labelSelector: { matchLabels: spec.selector.matchLabels },
                },
              },
            ],
          },
        });
        const pdb = find(objects, "PodDisruptionBudget", name).spec as {
          minAvailable: number;
          selector: unknown;
        };
        assert.equal(pdb.minAvailable, 1);
        assert.deepEqual(pdb.selector, { matchLabels: spec.selector.matchLabels });

        assert.equal(spec.template.spec.containers.length, 1);
        const [c] = spec.template.spec.containers as [Container];
        const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
        assert.deepEqual(ports, componentPorts);
        assert.deepEqual(c.readinessProbe?.httpGet, { path: "/readyz", port: "metrics" });
        assert.deepEqual(c.livenessProbe?.httpGet, { path: "/healthz", port: "metrics" });
        assert.equal(ports.metrics, adminPort);
        assert.ok(
          c.args?.includes(`--admin-listen=0.0.0.0:${adminPort}`),
          "the kubelet must reach the probes",
        );
        assert.ok(c.resources?.requests?.cpu && c.resources.requests.memory, "requests");
        assert.ok(c.resources?.limits?.cpu && c.resources.limits.memory, "limits");
        const sc = c.securityContext ?? {};
        assert.equal(sc.runAsNonRoot, true);
        assert.equal(typeof sc.runAsUser, "number");
        assert.notEqual(sc.runAsUser, 0);
        assert.equal(sc.readOnlyRootFilesystem, true);
        assert.equal(sc.allowPrivilegeEscalation, false);
        assert.deepEqual(sc.capabilities, { drop: ["ALL"] });
        assert.deepEqual(sc.seccompProfile, { type: "RuntimeDefault" });
        assert.deepEqual(spec.template.spec.securityContext?.seccompProfile, { type: "RuntimeDefault" });
      });
    }

    test("Services: signing + metrics ports for the server, 443 → 9443 for the webhook, selecting their pods", () => {
      for (const [name, ports] of [
        ["osm-cert", { grpc: [15443, "grpc"], metrics: [9091, "metrics"] }],
        ["osm-cert-webhook", { https: [443, "https"], metrics: [9092, "metrics"] }],
      ] as const) {
        const spec = find(objects, "Service", name).spec as {
          selector: Record<string, string>;
          ports: { name: string; port: number; targetPort: string }[];
        };
        assert.deepEqual(Object.fromEntries(spec.ports.map((p) => [p.name, [p.port, p.targetPort]])), ports);
        const pods = (find(objects, "Deployment", name).spec as PodTemplateOwner).template.metadata.labels;
        for (const [k, v] of Object.entries(spec.selector))
          assert.equal(pods[k], v, `${name} selects its own pods`);
        assert.equal(
          spec.selector["app.kubernetes.io/component"],
          name === "osm-cert" ? "server" : "webhook",
        );
      }
    });

    test("MutatingWebhookConfiguration osm-cert-injector: v1 reviews, no side effects, reinvoked, pods CREATE in meshed namespaces, no caBundle", () => {
      const config = find(objects, "MutatingWebhookConfiguration", "osm-cert-injector");
      const webhooks = config.webhooks as Record<string, unknown>[];
      assert.equal(webhooks.length, 1);
      const [w] = webhooks as [Record<string, unknown>];
      assert.deepEqual(w.admissionReviewVersions, ["v1"]);
      assert.equal(w.sideEffects, "None");
      assert.equal(w.reinvocationPolicy, "IfNeeded");
      assert.equal(w.failurePolicy, "Fail");
      assert.deepEqual(w.clientConfig, {
        service: { name: "osm-cert-webhook", namespace: NS, path: "/mutate-pod-v1", port: 443 },
      });
      // Helm's three-way merge leaves fields alone that neither manifest sets: the webhook owns caBundle.
      assert.ok(!("caBundle" in (w.clientConfig as object)));
      assert.deepEqual(w.rules, [
        {
          apiGroups: [""],
          apiVersions: ["v1"],
          operations: ["CREATE"],
          resources: ["pods"],
          scope: "Namespaced",
        },
      ]);
      assert.deepEqual(w.namespaceSelector, {
        matchLabels: { "openservicemesh.io/monitored-by": "osm" },
        matchExpressions: [{ key: "kubernetes.io/metadata.name", operator: "NotIn", values: [NS] }],
      });
      assert.equal(w.objectSelector, undefined);
    });

    test("the webhook's args follow CONTRACT.md", () => {
      const [c] = (find(objects, "Deployment", "osm-cert-webhook").spec as PodTemplateOwner).template.spec
        .containers as [Container];
      assert.deepEqual(c.args, [
        "webhook",
        "--listen=0.0.0.0:9443",
        "--admin-listen=0.0.0.0:9092",
        "--certificate-manager=tresor",
        `--osm-namespace=${NS}`,
        "--ca-bundle-secret-name=osm-ca-bundle",
        "--webhook-service=osm-cert-webhook",
        "--webhook-config-name=osm-cert-injector",
        "--agent-image=openservicemesh/osm-cert:0.1.0",
        "--agent-image-pull-policy=IfNotPresent",
        `--signing-server=osm-cert.${NS}.svc:15443`,
        "--token-audience=osm-cert",
        "--token-expiration=1h",
        "--trust-bundle-configmap-name=osm-ca-root-cert",
        "--envoy-uid=1500",
        "--agent-cpu-request=10m",
        "--agent-memory-request=48Mi",
        "--agent-memory-limit=96Mi",
        "--agent-cpu-limit=",
        "--trust-domain=cluster.local",
      ]);
      // And `osm-cert webhook` itself accepts them, with these values.
      try {
        const flags = parseFlags("webhook", WEBHOOK_FLAGS, (c.args ?? []).slice(1), {});
        assert.equal(flags["agent-image"], "openservicemesh/osm-cert:0.1.0");
        assert.equal(flags["signing-server"], `osm-cert.${NS}.svc:15443`);
      } catch (error) {
        assert.fail(`the webhook would refuse the chart's args: ${(error as FlagError).message}`);
      }
    });

    test("image values: repository, tag (default appVersion) and pull policy reach both Deployments", async () => {
      const custom = await render({
        values: [{ image: { repository: "registry.example/osm-cert", tag: "1.2.3", pullPolicy: "Always" } }],
      });
      for (const name of ["osm-cert", "osm-cert-webhook"]) {
        const [c] = (find(custom, "Deployment", name).spec as PodTemplateOwner).template.spec.containers as [
          Container & { image: string; imagePullPolicy: string },
        ];
        assert.equal(c.image, "registry.example/osm-cert:1.2.3");
        assert.equal(c.imagePullPolicy, "Always");
      }
      const [w] = (find(custom, "Deployment", "osm-cert-webhook").spec as PodTemplateOwner).template.spec
        .containers as [Container];
      assert.ok(
        w.args?.includes("--agent-image=registry.example/osm-cert:1.2.3"),
        "the agent runs the same image",
      );
    });

    test("one replica: no PodDisruptionBudget that would block every node drain", async () => {
      const single = await render({ values: [{ server: { replicas: 1 }, webhook: { replicas: 1 } }] });
      assert.ok(!single.some((o) => o.kind === "PodDisruptionBudget"));
    });

    test("webhook.enabled=false renders no webhook object and no webhook RBAC", async () => {
      const off = await render({ values: [{ webhook: { enabled: false } }] });
      assert.ok(off.every((o) => o.metadata.labels?.["app.kubernetes.io/component"] === "server"));
      assert.ok(!off.some((o) => o.kind === "MutatingWebhookConfiguration"));
    });
  });

  describe("optional ServiceMonitor and NetworkPolicy", () => {
    let objects: Obj[];
    before(async () => {
      objects = await render(EVERYTHING);
    });

    test("all documents valid", () => checkObjects(objects));

    test("ServiceMonitor scrapes the metrics port of both Services", () => {
      const monitor = find(objects, "ServiceMonitor", "osm-cert");
      const spec = monitor.spec as {
        selector: { matchLabels: Record<string, string> };
        endpoints: { port: string }[];
      };
      assert.equal(monitor.metadata.labels?.release, "prometheus");
      assert.deepEqual(
        spec.endpoints.map((e) => e.port),
        ["metrics"],
      );
      for (const name of ["osm-cert", "osm-cert-webhook"]) {
        const service = find(objects, "Service", name);
        for (const [k, v] of Object.entries(spec.selector.matchLabels))
          assert.equal(service.metadata.labels?.[k], v);
        assert.ok((service.spec as { ports: { name: string }[] }).ports.some((p) => p.name === "metrics"));
      }
    });

    test("NetworkPolicy: only meshed namespaces reach the signing port; metrics only from metricsFrom", () => {
      const policy = find(objects, "NetworkPolicy", "osm-cert").spec as {
        podSelector: { matchLabels: Record<string, string> };
        policyTypes: string[];
        ingress: { from?: unknown[]; ports: { port: string }[] }[];
      };
      assert.deepEqual(policy.policyTypes, ["Ingress"]);
      assert.equal(policy.podSelector.matchLabels["app.kubernetes.io/component"], "server");
      assert.deepEqual(policy.ingress, [
        {
          from: [
            {
              namespaceSelector: {
                matchExpressions: [{ key: "openservicemesh.io/monitored-by", operator: "Exists" }],
              },
            },
          ],
          ports: [{ port: "grpc", protocol: "TCP" }],
        },
        {
          from: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } }],
          ports: [{ port: "metrics", protocol: "TCP" }],
        },
      ]);
      const webhook = find(objects, "NetworkPolicy", "osm-cert-webhook").spec as typeof policy;
      // The API server is not a pod: the webhook port is open to any source, and only that port.
      assert.deepEqual(webhook.ingress[0], { ports: [{ port: "https", protocol: "TCP" }] });
    });

    test("the objectSelector value reaches the webhook configuration", () => {
      const [w] = find(objects, "MutatingWebhookConfiguration", "osm-cert-injector").webhooks as [
        Record<string, unknown>,
      ];
      assert.deepEqual(w.objectSelector, {
        matchExpressions: [{ key: "osm-cert/skip", operator: "DoesNotExist" }],
      });
    });
  });

  describe("bad values are refused with a message that says what to do", () => {
    test("vault without the token Secret: `required` names vault.secret.name", async () => {
      const error = await renderError({ values: [{ certificateProvider: { kind: "vault" } }] });
      assert.match(
        error,
        /vault\.secret\.name is required with certificateProvider\.kind=vault: the name of an existing Secret/,
      );
    });

    test("an inline Vault token: the schema refuses it, and the template too when the schema is skipped", async () => {
      const inline = {
        certificateProvider: { kind: "vault" },
        vault: { token: "hvs.secret", secret: { name: "t" } },
      };
      assert.match(
        await renderError({ values: [inline] }),
        /- vault\.token: String length must be less than or equal to 0/,
      );
      assert.match(
        await renderError({ values: [inline], skipSchemaValidation: true }),
        /vault\.token is not accepted: a token in values is stored in Helm's release record/,
      );
    });

    test("the schema refuses an unknown backend, wrong types, bad durations and unknown keys", async () => {
      const error = await renderError({
        values: [
          {
            certificateProvider: { kind: "spire", serviceCertValidityDuration: "1 day" },
            server: { replicas: "2" },
            webhook: { failurePolicy: "Sometimes" },
            vault: { port: 70000 },
            serviceMonitor: { enabeld: true },
          },
        ],
      });
      assert.match(
        error,
        /^Error: values don't meet the specifications of the schema\(s\) in the following chart\(s\):\nosm-cert:/,
      );
      assert.match(
        error,
        /- certificateProvider\.kind: certificateProvider\.kind must be one of the following: "tresor", "vault", "cert-manager"/,
      );
      assert.match(error, /- certificateProvider\.serviceCertValidityDuration: Does not match pattern/);
      assert.match(error, /- server\.replicas: Invalid type\. Expected: integer, given: string/);
      assert.match(
        error,
        /- webhook\.failurePolicy: webhook\.failurePolicy must be one of the following: "Fail", "Ignore"/,
      );
      assert.match(error, /- vault\.port: Must be less than or equal to 65535/);
      assert.match(error, /- serviceMonitor: Additional property enabeld is not allowed/);
    });

    test("the webhook with a backend other than Tresor (it could not start, and would block pods)", async () => {
      const error = await renderError({ values: [{ certificateProvider: { kind: "cert-manager" } }] });
      assert.match(
        error,
        /webhook\.enabled=true needs certificateProvider\.kind=tresor: .* Set webhook\.enabled=false for this backend/,
      );
    });

    test("serviceMonitor.enabled on a cluster without the Prometheus Operator's CRD", async () => {
      const error = await renderError({ values: [{ serviceMonitor: { enabled: true } }] });
      assert.match(error, /needs the Prometheus Operator's ServiceMonitor CRD/);
    });

    test("a cluster older than native sidecars (1.29)", async () => {
      assert.match(
        await renderError({ kubeVersion: "v1.28.9" }),
        /chart requires kubeVersion: >=1\.29\.0-0 which is incompatible with Kubernetes v1\.28\.9/,
      );
    });

    test("valid values still render (the refusals above are about those values only)", async () => {
      assert.ok((await renderChart({ values: [BACKENDS.vault], kubeVersion: "v1.29.0" })).ok);
    });
  });

  test("every value in values.yaml carries a comment (Kubernetes shapes under `resources` excepted)", () => {
    const text = readFileSync(
      fileURLToPath(new URL("../../../helm/osm-cert/values.yaml", import.meta.url)),
      "utf8",
    );
    const doc = parseDocument(text);
    const undocumented: string[] = [];
    const walk = (map: YAMLMap, path: string, mapComment: string | null | undefined) => {
      map.items.forEach((pair, index) => {
        const key = String((pair.key as { value?: unknown }).value ?? pair.key);
        const at = path ? `${path}.${key}` : key;
        // A comment above the first key of a nested map belongs to that map in the yaml package's tree.
        if (!(pair.key as { commentBefore?: string }).commentBefore && !(index === 0 && mapComment))
          undocumented.push(at);
        if (isMap(pair.value) && key !== "resources") walk(pair.value, at, pair.value.commentBefore);
      });
    };
    assert.ok(isMap(doc.contents));
    walk(doc.contents, "", doc.contents.commentBefore ?? doc.commentBefore);
    assert.deepEqual(undocumented, []);
  });

  test("NOTES.txt tells the operator what was installed and what is left on uninstall", async () => {
    const tresor = await renderChart();
    const certManager = await renderChart({ values: [BACKENDS["cert-manager/Issuer"]] });
    assert.ok(tresor.ok && certManager.ok);
    assert.match(tresor.notes, /Signing backend: tresor/);
    assert.match(tresor.notes, /kubectl rollout status deployment\/osm-cert -n osm-system/);
    assert.match(
      certManager.notes,
      /kubectl create secret generic osm-ca-bundle -n osm-system --from-file=ca\.crt=/,
    );
    assert.doesNotMatch(tresor.notes, /<no value>/);
  });

  describe("applied to the fake API server over HTTPS, as `helm install` would", () => {
    let fake: FakeKubeApiServer;
    let client: KubeClient;
    before(async () => {
      fake = await FakeKubeApiServer.start({ namespaces: [NS] });
      client = installerClient(fake, NS);
    });
    after(async () => {
      await fake.close();
    });

    test("every object is created (201), reads back as sent, and a second install collides (409)", async () => {
      const objects = inInstallOrder(await render(EVERYTHING));
      for (const object of objects) {
        const type = typeOf(object);
        await client.create(type, object as unknown as KubeObject, { namespace: object.metadata.namespace });
        const stored = await client.get(type, object.metadata.name, { namespace: object.metadata.namespace });
        assertContains(stored, object, `${object.kind}/${object.metadata.name}`);
      }
      for (const object of objects) {
        await assert.rejects(
          client.create(typeOf(object), object as unknown as KubeObject, {
            namespace: object.metadata.namespace,
          }),
          (error) => isAlreadyExists(error),
          `${object.kind}/${object.metadata.name}: second create`,
        );
      }
      const created = fake.requests.filter((r) => r.verb === "create");
      assert.equal(created.filter((r) => r.status === 201).length, objects.length);
      assert.equal(created.filter((r) => r.status === 409).length, objects.length);
      // The server-side defaults a real API server adds are there too.
      const service = fake.object("services", NS, "osm-cert") as { spec: { clusterIP: string } };
      assert.match(service.spec.clusterIP, /^10\.96\.\d+\.\d+$/);
    });

    test("an upgrade with new image, replicas and webhook settings replaces every object without touching immutable fields", async () => {
      const upgraded = inInstallOrder(
        await render({
          ...EVERYTHING,
          upgrade: true,
          values: [
            ...(EVERYTHING.values ?? []),
            {
              image: { tag: "0.2.0" },
              server: { replicas: 3 },
              webhook: { failurePolicy: "Ignore", timeoutSeconds: 5 },
            },
          ],
        }),
      );
      for (const object of upgraded) {
        // The MutatingWebhookConfiguration is left out: Helm patches it (a strategic merge by webhook
        // name that keeps the live caBundle), where a PUT here would replace it whole.
        if (object.kind === "MutatingWebhookConfiguration") continue;
        const type = typeOf(object);
        const live = await client.get(type, object.metadata.name, { namespace: object.metadata.namespace });
        const next = {
          ...object,
          metadata: { ...object.metadata, resourceVersion: live.metadata?.resourceVersion },
        };
        // Deployment selectors and binding roleRefs are immutable: the fake answers 422 if they moved.
        const stored = await client.update(type, next as unknown as KubeObject, {
          namespace: object.metadata.namespace,
        });
        assertContains(stored, object, `upgrade ${object.kind}/${object.metadata.name}`);
      }
      const server = fake.object("deployments", NS, "osm-cert") as unknown as {
        spec: { replicas: number; template: { spec: { containers: { image: string }[] } } };
      };
      assert.equal(server.spec.replicas, 3);
      assert.equal(server.spec.template.spec.containers[0]?.image, "openservicemesh/osm-cert:0.2.0");
    });

    test("the fake's own checks bite: a Deployment whose selector misses its pod labels is 422 Invalid", async () => {
      const deployment = find(await render(), "Deployment", "osm-cert") as Obj & { spec: PodTemplateOwner };
      deployment.metadata.name = "broken";
      deployment.spec.template.metadata.labels = { app: "other" };
      await assert.rejects(
        client.create(typeOf(deployment), deployment as unknown as KubeObject, { namespace: NS }),
        (error) =>
          error instanceof KubeApiError &&
          error.status === 422 &&
          /selector.*does not match template/.test(error.message),
      );
    });
  });

  describe("the real server under the fake API server's RBAC authorizer, granted only what the chart grants (tresor)", () => {
    let fake: FakeKubeApiServer;
    let dir: Awaited<ReturnType<typeof tempDir>>;
    let server: CliProcess | undefined;
    let address: string;
    const SA_USER = `system:serviceaccount:${NS}:osm-cert`;
    const MESHED = "bookstore";
    const forbidden = (error: unknown) => error instanceof KubeApiError && error.status === 403;

    before(async () => {
      fake = await FakeKubeApiServer.start({ namespaces: [NS], rbac: true });
      fake.seed("namespaces", {
        metadata: { name: MESHED, labels: { "openservicemesh.io/monitored-by": "osm" } },
      });
      const objects = await render();
      await installChart(fake, objects, NS);
      dir = await tempDir();
      ({ server, address } = await startChartServer(fake, chartServerArgs(objects), dir.path, NS));
    });
    after(async () => {
      await server?.stop();
      await fake?.close();
      await dir?.remove();
    });

    test("it creates the root, wins the Lease, fills meshed namespaces, reviews tokens and signs: no 403 at all", async () => {
      const deadline = Date.now() + 20_000;
      while (fake.object("configmaps", MESHED, "osm-ca-root-cert") === undefined) {
        assert.ok(Date.now() < deadline, "the trust-bundle ConfigMap never reached the meshed namespace");
        await sleep(100);
      }
      const secret = fake.object("secrets", NS, "osm-ca-bundle") as { data: Record<string, string> };
      assert.ok(fake.object("leases", NS, "osm-cert-leader"), "the leader Lease");
      const root = Buffer.from(secret.data["ca.crt"] ?? "", "base64").toString("utf8");

      const sa = "bookstore-v2";
      const cn = `${sa}.${MESHED}.cluster.local`;
      const { privateKey } = await generateKeyPair("ecdsa-p256");
      const csr = encodePem(
        "CERTIFICATE REQUEST",
        createCsr({
          privateKey,
          commonName: cn,
          dnsNames: [cn],
          uris: [`spiffe://cluster.local/ns/${MESHED}/sa/${sa}`],
        }),
      );
      const bearer = fake.serviceAccountToken(MESHED, sa, { audiences: ["osm-cert"] });
      const client = new TestSigningClient(address, root, undefined, bearer);
      try {
        const response = await client.create(csr);
        assert.ok(
          new X509Certificate(response.certificate_chain[0] as string).verify(
            new X509Certificate(root).publicKey,
          ),
        );
      } finally {
        client.close();
      }

      assertChartRbacSuffices(fake, SA_USER, [
        "create secrets",
        // Root rotation: every replica follows the rotation Secret by name.
        "watch secrets",
        "create leases",
        "list namespaces",
        "create configmaps",
        "create tokenreviews",
      ]);
      assert.deepEqual(
        server?.lines.filter((l) => /forbidden|rbac/i.test(String(l.msg ?? l.event ?? ""))),
        [],
        "the server logged a permission problem",
      );
    });

    test("and the authorizer bites: anything beyond the chart's rows is 403 for that ServiceAccount", async () => {
      const sa = serviceAccountClient(fake, "osm-cert", NS);
      await assert.rejects(
        sa.get(SECRETS, "someone-elses-secret", { namespace: NS }),
        forbidden,
        "get pinned to osm-ca-bundle",
      );
      await assert.rejects(sa.list(SECRETS, { namespace: NS }), forbidden, "no list on secrets");
      await assert.rejects(sa.delete(SECRETS, "osm-ca-bundle", { namespace: NS }), forbidden, "no delete");
      await assert.rejects(
        sa.update(
          SECRETS,
          { metadata: { name: "osm-ca-bundle-rotation", namespace: NS } },
          { namespace: NS },
        ),
        forbidden,
        "the rotation Secret is written by rotate-root only",
      );
      await assert.rejects(
        sa.get(SECRETS, "osm-ca-bundle", { namespace: MESHED }),
        forbidden,
        "the Role is namespaced",
      );
      assert.ok(await sa.get(SECRETS, "osm-ca-bundle", { namespace: NS }), "what the chart grants works");
    });

    test("the webhook's ServiceAccount can do what CONTRACT.md lists (read the root, keep caBundle) and nothing more", async () => {
      const webhook = serviceAccountClient(fake, "osm-cert-webhook", NS);
      const MWC: ResourceType<KubeObject & { webhooks?: { clientConfig: { caBundle?: string } }[] }> = {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "mutatingwebhookconfigurations",
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
      };
      assert.ok(await webhook.get(SECRETS, "osm-ca-bundle", { namespace: NS }));
      const live = await webhook.get(MWC, "osm-cert-injector");
      const caBundle = Buffer.from("the mesh roots, as the webhook writes them").toString("base64");
      const webhooks = (live.webhooks ?? []).map((w) => ({
        ...w,
        clientConfig: { ...w.clientConfig, caBundle },
      }));
      const patched = await webhook.patch(MWC, "osm-cert-injector", { webhooks });
      assert.equal(patched.webhooks?.[0]?.clientConfig.caBundle, caBundle);
      await assert.rejects(
        webhook.create(SECRETS, { metadata: { name: "x" } }, { namespace: NS }),
        forbidden,
      );
      await assert.rejects(webhook.get(SECRETS, "osm-vault-token", { namespace: NS }), forbidden);
      await assert.rejects(webhook.delete(MWC, "osm-cert-injector"), forbidden);
      await assert.rejects(webhook.list(MWC, {}), forbidden);
    });
  });
});

/** Everything sent is stored as sent (the server may add defaults, never change what was given). */
function assertContains(actual: unknown, expected: unknown, path: string): void {
  if (expected !== null && typeof expected === "object" && !Array.isArray(expected)) {
    assert.equal(typeof actual, "object", path);
    for (const [key, value] of Object.entries(expected))
      assertContains((actual as Record<string, unknown>)[key], value, `${path}.${key}`);
  } else if (Array.isArray(expected)) {
    assert.ok(Array.isArray(actual) && actual.length === expected.length, path);
    for (const [i, value] of expected.entries())
      assertContains((actual as unknown[])[i], value, `${path}[${i}]`);
  } else {
    assert.equal(actual, expected, path);
  }
}
