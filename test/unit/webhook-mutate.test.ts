// The patch builder on real-world pods after OSM's injection: the JSON Patch is applied with a
// JSON-patch library, the result validated as a Pod against the Kubernetes OpenAPI schema plus the
// cross-references the schema cannot express, and a second pass must add nothing.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import jsonpatch from "fast-json-patch";
import { Pod } from "kubernetes-models/v1";
import {
  AGENT_CONTAINER,
  CA_DIR,
  type InjectionConfig,
  SDS_DIR,
  SDS_VOLUME,
  TOKEN_DIR,
} from "../../webhook/agent-sidecar.js";
import { appendTo, type PatchOperation, pointer } from "../../webhook/json-patch.js";
import { type Mutation, mutatePod } from "../../webhook/mutate.js";
import { ENVOY_UID, type Json, osmEnvoyContainer, osmInjectedPod } from "../helpers/osm-pods.js";

const CONFIG: InjectionConfig = {
  agentImage: "openservicemesh/osm-cert:0.1.0",
  agentImagePullPolicy: "IfNotPresent",
  signingServer: "osm-cert.osm-system.svc:15443",
  tokenAudience: "osm-cert",
  tokenExpirationSeconds: 3600,
  trustBundleConfigMapName: "osm-ca-root-cert",
  envoyUid: ENVOY_UID,
  trustDomain: "cluster.local",
  resources: { cpuRequest: "10m", memoryRequest: "48Mi", memoryLimit: "96Mi", cpuLimit: "" },
};

type Container = Json & { name: string; volumeMounts?: Json[]; restartPolicy?: string };
interface PodShape {
  spec: {
    containers: Container[];
    initContainers?: Container[];
    volumes?: (Json & { name: string })[];
  } & Json;
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

/** Checks what the OpenAPI schema cannot: unique names, and mounts that name real volumes. */
function assertValidPod(object: Json): void {
  new Pod(object as ConstructorParameters<typeof Pod>[0]).validate();
  const { spec } = object as unknown as PodShape;
  const all = [...(spec.initContainers ?? []), ...spec.containers];
  const names = all.map((c) => c.name);
  assert.equal(new Set(names).size, names.length, `duplicate container names: ${names.join(", ")}`);
  const volumes = (spec.volumes ?? []).map((v) => v.name);
  assert.equal(new Set(volumes).size, volumes.length, `duplicate volume names: ${volumes.join(", ")}`);
  for (const container of all) {
    const paths = new Set<string>();
    for (const mount of container.volumeMounts ?? []) {
      assert.ok(
        volumes.includes(mount.name as string),
        `${container.name} mounts missing volume ${mount.name}`,
      );
      assert.ok(!paths.has(mount.mountPath as string), `${container.name} mounts ${mount.mountPath} twice`);
      paths.add(mount.mountPath as string);
    }
  }
}

function applied(pod: Json, patch: readonly PatchOperation[]): Json {
  // validate=true: the library refuses operations whose paths do not exist, as the API server does.
  return jsonpatch.applyPatch(clone(pod), clone(patch) as jsonpatch.Operation[], true, false).newDocument;
}

function injected(pod: Json): { result: Json; mutation: Mutation & { allowed: true } } {
  assertValidPod(pod);
  const mutation = mutatePod(clone(pod), CONFIG);
  assert.equal(mutation.allowed, true, mutation.allowed ? "" : mutation.message);
  assert.ok(mutation.allowed);
  assert.equal(mutation.outcome, "injected");
  const result = applied(pod, mutation.patch);
  assertValidPod(result);
  const again = mutatePod(clone(result), CONFIG);
  assert.deepEqual(again, {
    allowed: true,
    outcome: "unchanged",
    patch: [],
    reason: "agent already injected",
  });
  return { result, mutation };
}

function assertAgentServesEnvoy(result: Json): void {
  const { spec } = result as unknown as PodShape;
  const inits = spec.initContainers ?? [];
  const agentAt = inits.findIndex((c) => c.name === AGENT_CONTAINER);
  assert.ok(agentAt >= 0, "agent is an init container");
  const agent = inits[agentAt] as Container;
  assert.equal(agent.restartPolicy, "Always", "agent is a native sidecar");
  const osmInitAt = inits.findIndex((c) => c.name === "osm-init");
  if (osmInitAt >= 0) assert.ok(osmInitAt < agentAt, "osm-init runs before the agent starts");
  const envoyInitAt = inits.findIndex((c) => c.name === "envoy");
  if (envoyInitAt >= 0) assert.ok(agentAt < envoyInitAt, "agent starts before a native-sidecar Envoy");
  else
    assert.ok(
      spec.containers.some((c) => c.name === "envoy"),
      "Envoy is a regular container, started after",
    );
  const envoy = [...inits, ...spec.containers].find((c) => c.name === "envoy") as Container;
  const socketMount = { name: SDS_VOLUME, mountPath: SDS_DIR };
  assert.ok(
    envoy.volumeMounts?.some((m) => m.name === SDS_VOLUME && m.mountPath === SDS_DIR),
    "Envoy mounts the socket volume",
  );
  assert.deepEqual(agent.volumeMounts?.[0], socketMount, "agent mounts the socket volume");
  const security = agent.securityContext as Json;
  assert.deepEqual(security, {
    runAsUser: ENVOY_UID,
    runAsGroup: ENVOY_UID,
    runAsNonRoot: true,
    readOnlyRootFilesystem: true,
    allowPrivilegeEscalation: false,
    privileged: false,
    capabilities: { drop: ["ALL"] },
    seccompProfile: { type: "RuntimeDefault" },
  });
  assert.deepEqual(agent.args, [
    "agent",
    "--server",
    "osm-cert.osm-system.svc:15443",
    "--ca-bundle",
    `${CA_DIR}/ca.crt`,
    "--token-file",
    `${TOKEN_DIR}/token`,
    "--sds-socket",
    `${SDS_DIR}/sds.sock`,
    "--sds-socket-mode",
    "0600",
    "--trust-domain",
    "cluster.local",
  ]);
  assert.equal(agent.livenessProbe, undefined);
  assert.equal(agent.readinessProbe, undefined);
  const volumes = spec.volumes ?? [];
  assert.deepEqual(
    volumes.find((v) => v.name === "osm-cert-token"),
    {
      name: "osm-cert-token",
      projected: {
        sources: [{ serviceAccountToken: { audience: "osm-cert", expirationSeconds: 3600, path: "token" } }],
      },
    },
  );
  assert.deepEqual((volumes.find((v) => v.name === "osm-cert-ca") as Json).configMap, {
    name: "osm-ca-root-cert",
    items: [{ key: "ca.crt", path: "ca.crt" }],
  });
  assert.deepEqual((volumes.find((v) => v.name === SDS_VOLUME) as Json).emptyDir, {
    medium: "Memory",
    sizeLimit: "1Mi",
  });
}

describe("pods OSM meshed get the agent", () => {
  test("OSM's bookstore pod: agent right after osm-init, socket shared with Envoy, nothing of the app changed", () => {
    const pod = osmInjectedPod();
    const { result, mutation } = injected(pod);
    assertAgentServesEnvoy(result);
    assert.ok(mutation.patch.every((op) => op.op === "add"));
    const { spec } = result as unknown as PodShape;
    assert.deepEqual(
      spec.initContainers?.map((c) => c.name),
      ["osm-init", AGENT_CONTAINER],
    );
    const before = (pod as unknown as PodShape).spec;
    assert.deepEqual(spec.containers[0], before.containers[0], "the app container is untouched");
    assert.deepEqual(spec.volumes?.slice(0, 2), before.volumes, "existing volumes keep their place");
  });

  test("app init containers and native sidecars of its own: the agent still goes right after osm-init", () => {
    const pod = osmInjectedPod({
      appInitContainers: [
        { name: "migrate", image: "bookstore/migrate:1", command: ["/migrate"] },
        { name: "log-shipper", image: "fluent/fluent-bit:3.0", restartPolicy: "Always" },
      ],
      appVolumes: [{ name: "data", emptyDir: {} }],
    });
    const { spec } = pod as unknown as PodShape;
    // OSM prepends osm-init in some versions: exercise an agent inserted mid-list.
    spec.initContainers = [spec.initContainers?.[2] as Container, ...(spec.initContainers ?? []).slice(0, 2)];
    const { result, mutation } = injected(pod);
    assertAgentServesEnvoy(result);
    assert.deepEqual(
      (result as unknown as PodShape).spec.initContainers?.map((c) => c.name),
      ["osm-init", AGENT_CONTAINER, "migrate", "log-shipper"],
    );
    assert.ok(mutation.patch.some((op) => op.path === "/spec/initContainers/1"));
  });

  test("restrictive pod securityContext: the agent's own context still pins Envoy's UID", () => {
    const pod = osmInjectedPod({
      podSecurityContext: {
        runAsNonRoot: true,
        runAsUser: 1000,
        runAsGroup: 3000,
        fsGroup: 2000,
        seccompProfile: { type: "RuntimeDefault" },
      },
    });
    assertAgentServesEnvoy(injected(pod).result);
  });

  test("no initContainers and no volumes fields: whole arrays are added, not appended to", () => {
    const pod = osmInjectedPod();
    const spec = (pod as unknown as PodShape).spec;
    delete spec.initContainers;
    const mutation = mutatePod(clone(pod), CONFIG);
    assert.ok(mutation.allowed);
    assert.ok(mutation.patch.some((op) => op.path === "/spec/initContainers" && Array.isArray(op.value)));
    assertAgentServesEnvoy(applied(pod, mutation.patch));

    // A pod with no volumes at all cannot carry OSM's bootstrap mount, so only check the paths.
    const bare = clone(pod);
    delete (bare as unknown as PodShape).spec.volumes;
    const bareMutation = mutatePod(bare, CONFIG);
    assert.ok(bareMutation.allowed);
    const volumesOp = bareMutation.patch.find((op) => op.path.startsWith("/spec/volumes"));
    assert.equal(volumesOp?.path, "/spec/volumes");
    assert.deepEqual(
      (volumesOp?.value as Json[] | undefined)?.map((v) => v.name),
      ["osm-cert-sds", "osm-cert-token", "osm-cert-ca"],
    );
    applied(bare, bareMutation.patch);
  });

  test("Envoy as a native sidecar itself: the agent is inserted before it and Envoy's mount lands on Envoy", () => {
    const pod = osmInjectedPod();
    const spec = (pod as unknown as PodShape).spec;
    const envoy = spec.containers.pop() as Container;
    spec.initContainers?.push({ ...envoy, restartPolicy: "Always" });
    const { result } = injected(pod);
    assertAgentServesEnvoy(result);
    assert.deepEqual(
      (result as unknown as PodShape).spec.initContainers?.map((c) => c.name),
      ["osm-init", AGENT_CONTAINER, "envoy"],
    );
  });

  test("half-injected pod (agent there, Envoy's mount lost): only the missing piece is added", () => {
    const { result } = injected(osmInjectedPod());
    const envoy = (result as unknown as PodShape).spec.containers[1] as Container;
    envoy.volumeMounts = envoy.volumeMounts?.filter((m) => m.name !== SDS_VOLUME);
    const mutation = mutatePod(clone(result), CONFIG);
    assert.ok(mutation.allowed);
    assert.deepEqual(mutation.patch, [
      {
        op: "add",
        path: "/spec/containers/1/volumeMounts/-",
        value: { name: SDS_VOLUME, mountPath: SDS_DIR },
      },
    ]);
  });

  test("a CPU limit appears only when configured", () => {
    const none = mutatePod(osmInjectedPod(), CONFIG);
    const some = mutatePod(osmInjectedPod(), {
      ...CONFIG,
      resources: { ...CONFIG.resources, cpuLimit: "200m" },
    });
    assert.ok(none.allowed && some.allowed);
    const agentOf = (m: Mutation) =>
      (m.allowed
        ? m.patch.find((op) => (op.value as Json)?.name === AGENT_CONTAINER)?.value
        : undefined) as Json;
    assert.deepEqual((agentOf(none).resources as Json).limits, { memory: "96Mi" });
    assert.deepEqual((agentOf(some).resources as Json).limits, { memory: "96Mi", cpu: "200m" });
  });
});

describe("pods the webhook leaves alone", () => {
  const skipped = (pod: Json, reason: RegExp) => {
    const mutation = mutatePod(pod, CONFIG);
    assert.equal(mutation.outcome, "skipped");
    assert.ok(mutation.allowed);
    assert.deepEqual(mutation.patch, []);
    assert.match(mutation.reason, reason);
  };

  test("sidecar-injection disabled", () => {
    skipped(
      osmInjectedPod({ annotations: { "openservicemesh.io/sidecar-injection": "disabled" } }),
      /disabled/,
    );
    skipped(osmInjectedPod({ annotations: { "openservicemesh.io/sidecar-injection": "false" } }), /false/);
    // "enabled" is OSM's opt-in, not an opt-out.
    assert.equal(
      mutatePod(
        osmInjectedPod({ annotations: { "openservicemesh.io/sidecar-injection": "enabled" } }),
        CONFIG,
      ).outcome,
      "injected",
    );
  });

  test("Windows pods", () => {
    const pod = osmInjectedPod();
    (pod.spec as Json).nodeSelector = { "kubernetes.io/os": "windows" };
    skipped(pod, /Windows/);
    const byOs = osmInjectedPod();
    (byOs.spec as Json).os = { name: "windows" };
    skipped(byOs, /Windows/);
  });

  test("pods without OSM's Envoy", () => {
    const pod = osmInjectedPod();
    const spec = (pod as unknown as PodShape).spec;
    spec.containers.pop();
    skipped(pod, /no OSM Envoy/);
  });

  test("another project's container called envoy (no UID 1500, no OSM bootstrap)", () => {
    const pod = osmInjectedPod();
    const spec = (pod as unknown as PodShape).spec;
    spec.containers[1] = {
      name: "envoy",
      image: "envoyproxy/envoy:v1.30.1",
      args: ["-c", "/etc/envoy/envoy.yaml"],
      volumeMounts: [{ name: "kube-api-access-x7k2p", mountPath: "/etc/envoy" }],
    };
    skipped(pod, /not OSM's/);
    const sameUid = osmInjectedPod();
    const envoy = (sameUid as unknown as PodShape).spec.containers[1] as Container;
    envoy.volumeMounts = envoy.volumeMounts?.filter((m) => m.name !== "envoy-bootstrap-config-volume");
    skipped(sameUid, /not OSM's/);
  });
});

describe("pods the webhook refuses, with a message", () => {
  const refused = (pod: unknown, message: RegExp) => {
    const mutation = mutatePod(pod, CONFIG);
    assert.equal(mutation.allowed, false);
    assert.ok(!mutation.allowed);
    assert.match(mutation.message, message);
  };

  test("hostNetwork", () => {
    const pod = osmInjectedPod();
    (pod.spec as Json).hostNetwork = true;
    refused(pod, /hostNetwork/);
  });

  test("a name we need, taken by something else", () => {
    const volume = osmInjectedPod({ appVolumes: [{ name: SDS_VOLUME, hostPath: { path: "/var/run" } }] });
    refused(volume, /volume name "osm-cert-sds" is already taken/);
    const token = osmInjectedPod({ appVolumes: [{ name: "osm-cert-token", secret: { secretName: "x" } }] });
    refused(token, /volume name "osm-cert-token"/);
    const ca = osmInjectedPod({
      appVolumes: [{ name: "osm-cert-ca", configMap: { name: "someone-elses" } }],
    });
    refused(ca, /volume name "osm-cert-ca"/);
    const container = osmInjectedPod();
    (container as unknown as PodShape).spec.containers.push({
      name: AGENT_CONTAINER,
      image: "other/agent:1",
    });
    refused(container, /container name "osm-cert-agent" is already taken in spec.containers/);
    const init = osmInjectedPod({ appInitContainers: [{ name: AGENT_CONTAINER, image: "other/agent:1" }] });
    refused(init, /container name "osm-cert-agent" is already taken in spec.initContainers/);
    const mountPath = osmInjectedPod({ appVolumes: [{ name: "sockets", emptyDir: {} }] });
    const spec = (mountPath as unknown as PodShape).spec;
    spec.containers[1] = osmEnvoyContainer("bookstore", "bookstore", [
      { name: "sockets", mountPath: SDS_DIR },
    ]) as Container;
    refused(mountPath, /already mounts "sockets" at \/var\/run\/osm-cert\/sds/);
  });

  test("malformed pods", () => {
    refused(null, /malformed pod: the object is not a JSON object/);
    refused("pod", /malformed/);
    refused({ metadata: {} }, /spec is missing/);
    refused({ spec: { containers: {} } }, /spec.containers is not a list/);
    refused({ spec: { containers: [] } }, /spec.containers is empty/);
    refused({ spec: { containers: [{ image: "x" }] } }, /spec.containers\[0\] has no name/);
    refused({ spec: { containers: [{ name: "a" }], volumes: [{}] } }, /spec.volumes\[0\] has no name/);
    refused({ spec: { containers: [{ name: "envoy", volumeMounts: "x" }] } }, /volumeMounts is not a list/);
    refused(
      { spec: { containers: [{ name: "a", volumeMounts: [7] }] } },
      /volumeMounts has an entry without a name/,
    );
    refused({ metadata: [], spec: { containers: [{ name: "a" }] } }, /metadata is not an object/);
  });

  test("any JSON at all: an answer, never an exception", () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.jsonValue(), (object, spec) => {
        for (const input of [object, { spec }, { spec: { containers: [spec, { name: "envoy" }] } }]) {
          const mutation = mutatePod(input, CONFIG);
          assert.equal(typeof mutation.allowed, "boolean");
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe("JSON Patch pointers", () => {
  test("keys with / and ~ are escaped, and land on the key they name", () => {
    assert.equal(
      pointer("metadata", "annotations", "openservicemesh.io/a~b"),
      "/metadata/annotations/openservicemesh.io~1a~0b",
    );
    const document = { metadata: { annotations: { "openservicemesh.io/a~b": "old" } } };
    const patch = [
      { op: "replace", path: pointer("metadata", "annotations", "openservicemesh.io/a~b"), value: "new" },
    ];
    const result = jsonpatch.applyPatch(document, patch as jsonpatch.Operation[], true, false).newDocument;
    assert.deepEqual(result, { metadata: { annotations: { "openservicemesh.io/a~b": "new" } } });
  });

  test("appending to a missing array adds it whole; to an existing one, element by element", () => {
    assert.deepEqual(appendTo(["spec", "volumes"], false, [1, 2]), [
      { op: "add", path: "/spec/volumes", value: [1, 2] },
    ]);
    assert.deepEqual(appendTo(["spec", "volumes"], true, [1, 2]), [
      { op: "add", path: "/spec/volumes/-", value: 1 },
      { op: "add", path: "/spec/volumes/-", value: 2 },
    ]);
    assert.deepEqual(appendTo(["spec", "volumes"], true, []), []);
  });
});
