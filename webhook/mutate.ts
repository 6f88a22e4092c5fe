// The patch builder: a pod in, a decision and a JSON Patch out. Pure, so every real-world pod
// shape can be tested without a server. Idempotent by construction: each piece is added only when
// missing, and a piece that exists under our name but is not ours refuses the pod instead of being
// overwritten (another webhook or the user owns that name).

import {
  AGENT_CONTAINER,
  agentContainer,
  agentVolumes,
  ENVOY_SDS_MOUNT,
  type InjectionConfig,
  SDS_DIR,
  SDS_VOLUME,
  TOKEN_VOLUME,
} from "./agent-sidecar.js";
import { appendTo, type PatchOperation, pointer } from "./json-patch.js";
import { type CheckedPod, type ContainerRef, classifyPod, isObject, type JsonObject } from "./osm-pod.js";

export type MutationOutcome = "injected" | "unchanged" | "skipped" | "refused";

export type Mutation =
  | {
      readonly allowed: true;
      readonly outcome: Exclude<MutationOutcome, "refused">;
      readonly patch: readonly PatchOperation[];
      readonly reason: string;
    }
  | { readonly allowed: false; readonly outcome: "refused"; readonly message: string };

function refuse(message: string): Mutation {
  return { allowed: false, outcome: "refused", message };
}

export function mutatePod(object: unknown, config: InjectionConfig): Mutation {
  const verdict = classifyPod(object, config.envoyUid);
  if (verdict.kind === "skip")
    return { allowed: true, outcome: "skipped", patch: [], reason: verdict.reason };
  if (verdict.kind === "refuse") return refuse(verdict.reason);
  const { pod, envoy, osmInitIndex } = verdict;

  const conflict = findConflict(pod, envoy, config);
  if (conflict !== null) return refuse(conflict);

  const patch: PatchOperation[] = [];
  const wanted = agentVolumes(config);
  const present = new Set((pod.volumes ?? []).map((v) => v.name));
  patch.push(
    ...appendTo(
      ["spec", "volumes"],
      pod.volumes !== null,
      Object.values(wanted).filter((v) => !present.has(v.name as string)),
    ),
  );

  // Envoy's mount before the agent's insertion: if Envoy is itself an init container, inserting
  // first would shift its index under the next operation.
  const envoyMounts = envoy.container.volumeMounts;
  if (!(Array.isArray(envoyMounts) && envoyMounts.some((m: JsonObject) => m.name === SDS_VOLUME))) {
    patch.push(
      ...appendTo(["spec", envoy.list, envoy.index, "volumeMounts"], Array.isArray(envoyMounts), [
        { ...ENVOY_SDS_MOUNT },
      ]),
    );
  }

  if (!(pod.initContainers ?? []).some((c) => c.name === AGENT_CONTAINER)) {
    patch.push(...insertAgent(pod, envoy, osmInitIndex, agentContainer(config)));
  }

  return patch.length === 0
    ? { allowed: true, outcome: "unchanged", patch, reason: "agent already injected" }
    : { allowed: true, outcome: "injected", patch, reason: "agent injected" };
}

/**
 * Right after osm-init: its iptables rules must exist before anything of the pod runs, and the
 * agent must be up before Envoy, which OSM puts in `containers` (started only once every init
 * container has run or, for native sidecars, started). If Envoy is itself a native sidecar, the
 * agent goes before it too.
 */
function insertAgent(
  pod: CheckedPod,
  envoy: ContainerRef,
  osmInitIndex: number,
  agent: Record<string, unknown>,
): PatchOperation[] {
  const inits = pod.initContainers;
  if (inits === null) return [{ op: "add", path: pointer("spec", "initContainers"), value: [agent] }];
  let at = osmInitIndex + 1;
  if (envoy.list === "initContainers") at = Math.min(at, envoy.index);
  return [
    {
      op: "add",
      path:
        at >= inits.length ? pointer("spec", "initContainers", "-") : pointer("spec", "initContainers", at),
      value: agent,
    },
  ];
}

/** A name or path we need that something else already holds; null when the pod is ours to patch. */
function findConflict(pod: CheckedPod, envoy: ContainerRef, config: InjectionConfig): string | null {
  for (const list of ["containers", "initContainers"] as const) {
    const items = list === "containers" ? pod.containers : (pod.initContainers ?? []);
    const found = items.find((c) => c.name === AGENT_CONTAINER);
    if (found === undefined) continue;
    if (list === "containers" || !isOurAgent(found))
      return `container name "${AGENT_CONTAINER}" is already taken in spec.${list} by a container osm-cert did not add`;
  }
  const wanted = agentVolumes(config);
  for (const volume of pod.volumes ?? []) {
    const ours = wanted[volume.name as string];
    if (ours !== undefined && !sameVolumeSource(volume, ours))
      return `volume name "${String(volume.name)}" is already taken by a volume osm-cert did not add`;
  }
  const mounts = Array.isArray(envoy.container.volumeMounts)
    ? (envoy.container.volumeMounts as JsonObject[])
    : [];
  for (const mount of mounts) {
    if ((mount.name === SDS_VOLUME) !== (mount.mountPath === SDS_DIR))
      return `the envoy container already mounts ${mount.name === SDS_VOLUME ? `"${SDS_VOLUME}" elsewhere than ${SDS_DIR}` : `"${String(mount.name)}" at ${SDS_DIR}`}`;
  }
  return null;
}

function isOurAgent(container: JsonObject): boolean {
  const args = container.args;
  return container.restartPolicy === "Always" && Array.isArray(args) && args[0] === "agent";
}

/** Same kind of source: an emptyDir, a projected token, or the trust-bundle ConfigMap. */
function sameVolumeSource(actual: JsonObject, wanted: Record<string, unknown>): boolean {
  if (isObject(wanted.emptyDir)) return isObject(actual.emptyDir);
  if (isObject(wanted.configMap))
    return isObject(actual.configMap) && actual.configMap.name === (wanted.configMap as JsonObject).name;
  if (actual.name === TOKEN_VOLUME) {
    const sources = isObject(actual.projected) ? actual.projected.sources : undefined;
    return Array.isArray(sources) && sources.some((s) => isObject(s) && isObject(s.serviceAccountToken));
  }
  return false;
}
