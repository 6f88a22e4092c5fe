// Which pods the webhook serves: the ones OSM's injector has meshed. OSM marks them by what it adds
// (pkg/injector in openservicemesh/osm): a container named `envoy` running as Envoy's UID with the
// bootstrap Secret mounted as `envoy-bootstrap-config-volume`, and an `osm-init` init container
// that installs the iptables redirection. The image is not part of the test: operators mirror it.
// Everything here reads untrusted JSON from the network, so every field is checked before use.

export const OSM_ENVOY_CONTAINER = "envoy";
export const OSM_INIT_CONTAINER = "osm-init";
export const OSM_BOOTSTRAP_VOLUME = "envoy-bootstrap-config-volume";
export const SIDECAR_INJECTION_ANNOTATION = "openservicemesh.io/sidecar-injection";

export type JsonObject = Record<string, unknown>;

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Where a container sits in the pod spec. */
export interface ContainerRef {
  readonly list: "containers" | "initContainers";
  readonly index: number;
  readonly container: JsonObject;
}

/** A pod whose spec has the shape the patch builder relies on. */
export interface CheckedPod {
  readonly spec: JsonObject;
  readonly containers: readonly JsonObject[];
  /** null when the pod has no `initContainers` field. */
  readonly initContainers: readonly JsonObject[] | null;
  /** null when the pod has no `volumes` field. */
  readonly volumes: readonly JsonObject[] | null;
}

export type PodVerdict =
  /** Not ours to touch: allowed unchanged. */
  | { readonly kind: "skip"; readonly reason: string }
  /** Ours, but we cannot serve it: denied with this message. */
  | { readonly kind: "refuse"; readonly reason: string }
  | {
      readonly kind: "mesh";
      readonly pod: CheckedPod;
      readonly envoy: ContainerRef;
      /** Index of `osm-init` in initContainers, -1 when absent. */
      readonly osmInitIndex: number;
    };

/** Checks the parts of a Pod we read; a message naming the first bad field, or the checked pod. */
export function checkPod(object: unknown): CheckedPod | string {
  if (!isObject(object)) return "the object is not a JSON object";
  if (object.metadata !== undefined && !isObject(object.metadata)) return "metadata is not an object";
  const spec = object.spec;
  if (!isObject(spec)) return "spec is missing or not an object";
  const lists: Record<string, JsonObject[] | null> = {};
  for (const field of ["containers", "initContainers", "volumes"] as const) {
    const value = spec[field];
    if (value === undefined || value === null) {
      lists[field] = null;
      continue;
    }
    if (!Array.isArray(value)) return `spec.${field} is not a list`;
    for (const [index, item] of value.entries()) {
      if (!isObject(item) || typeof item.name !== "string" || item.name === "")
        return `spec.${field}[${index}] has no name`;
      if (field !== "volumes") {
        const mounts = item.volumeMounts;
        if (mounts !== undefined && mounts !== null && !Array.isArray(mounts))
          return `spec.${field}[${index}].volumeMounts is not a list`;
        if (Array.isArray(mounts) && mounts.some((m) => !isObject(m) || typeof m.name !== "string"))
          return `spec.${field}[${index}].volumeMounts has an entry without a name`;
      }
    }
    lists[field] = value as JsonObject[];
  }
  if (lists.containers === null || lists.containers === undefined || lists.containers.length === 0)
    return "spec.containers is empty";
  return {
    spec,
    containers: lists.containers,
    initContainers: lists.initContainers ?? null,
    volumes: lists.volumes ?? null,
  };
}

function annotations(object: JsonObject): JsonObject {
  const metadata = isObject(object.metadata) ? object.metadata : {};
  return isObject(metadata.annotations) ? metadata.annotations : {};
}

function findContainer(pod: CheckedPod, name: string): ContainerRef | null {
  for (const list of ["containers", "initContainers"] as const) {
    const items = list === "containers" ? pod.containers : (pod.initContainers ?? []);
    const index = items.findIndex((c) => c.name === name);
    if (index >= 0) return { list, index, container: items[index] as JsonObject };
  }
  return null;
}

/** OSM's Envoy, not another project's container that happens to be called `envoy`. */
function isOsmEnvoy(container: JsonObject, envoyUid: number): boolean {
  const security = isObject(container.securityContext) ? container.securityContext : {};
  const mounts = Array.isArray(container.volumeMounts) ? (container.volumeMounts as JsonObject[]) : [];
  return security.runAsUser === envoyUid && mounts.some((m) => m.name === OSM_BOOTSTRAP_VOLUME);
}

function isWindows(spec: JsonObject): boolean {
  const selector = isObject(spec.nodeSelector) ? spec.nodeSelector : {};
  const os = isObject(spec.os) ? spec.os.name : undefined;
  return selector["kubernetes.io/os"] === "windows" || os === "windows";
}

export function classifyPod(object: unknown, envoyUid: number): PodVerdict {
  const pod = checkPod(object);
  if (typeof pod === "string") return { kind: "refuse", reason: `malformed pod: ${pod}` };
  // OSM's own opt-out; "disabled" is what OSM documents, "no"/"false" what it also accepts.
  const injection = annotations(object as JsonObject)[SIDECAR_INJECTION_ANNOTATION];
  if (typeof injection === "string" && ["disabled", "no", "false"].includes(injection.toLowerCase()))
    return { kind: "skip", reason: `${SIDECAR_INJECTION_ANNOTATION}: ${injection}` };
  // OSM meshes Windows pods with a Windows Envoy and no osm-init; our agent image is Linux only.
  if (isWindows(pod.spec)) return { kind: "skip", reason: "Windows pod" };
  const envoy = findContainer(pod, OSM_ENVOY_CONTAINER);
  if (envoy === null) return { kind: "skip", reason: "no OSM Envoy container" };
  if (!isOsmEnvoy(envoy.container, envoyUid))
    return {
      kind: "skip",
      reason: `container "envoy" is not OSM's (no runAsUser ${envoyUid} with ${OSM_BOOTSTRAP_VOLUME} mounted)`,
    };
  if (pod.spec.hostNetwork === true)
    return {
      kind: "refuse",
      reason:
        "osm-cert does not serve hostNetwork pods: the agent and Envoy would share the node's network namespace " +
        "(admin ports collide between pods, osm-init's iptables rules would apply to the node); " +
        `set ${SIDECAR_INJECTION_ANNOTATION}: disabled or drop hostNetwork`,
    };
  const osmInitIndex = (pod.initContainers ?? []).findIndex((c) => c.name === OSM_INIT_CONTAINER);
  return { kind: "mesh", pod, envoy, osmInitIndex };
}
