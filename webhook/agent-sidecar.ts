// What the webhook adds to a meshed pod (CONTRACT.md "Injected agent"): the agent as a native
// sidecar and its three volumes. Pure data built from the configuration, no pod input.

import { AGENT_ENV } from "../common/agent-node-options.js";

export const AGENT_CONTAINER = "osm-cert-agent";
export const SDS_VOLUME = "osm-cert-sds";
export const TOKEN_VOLUME = "osm-cert-token";
export const CA_VOLUME = "osm-cert-ca";
export const SDS_DIR = "/var/run/osm-cert/sds";
export const TOKEN_DIR = "/var/run/osm-cert/token";
export const CA_DIR = "/var/run/osm-cert/ca";

export interface InjectionConfig {
  readonly agentImage: string;
  readonly agentImagePullPolicy: string;
  /** HOST:PORT, the agent's --server. */
  readonly signingServer: string;
  readonly tokenAudience: string;
  readonly tokenExpirationSeconds: number;
  readonly trustBundleConfigMapName: string;
  readonly envoyUid: number;
  readonly trustDomain: string;
  readonly resources: {
    readonly cpuRequest: string;
    readonly memoryRequest: string;
    readonly memoryLimit: string;
    /** "" = no CPU limit (throttling would delay renewals for nothing). */
    readonly cpuLimit: string;
  };
}

export function agentVolumes(config: InjectionConfig): Record<string, Record<string, unknown>> {
  return {
    // The socket lives in memory: nothing secret is sent over it, but nothing needs disk either.
    [SDS_VOLUME]: { name: SDS_VOLUME, emptyDir: { medium: "Memory", sizeLimit: "1Mi" } },
    [TOKEN_VOLUME]: {
      name: TOKEN_VOLUME,
      projected: {
        sources: [
          {
            serviceAccountToken: {
              audience: config.tokenAudience,
              expirationSeconds: config.tokenExpirationSeconds,
              path: "token",
            },
          },
        ],
      },
    },
    // Not optional: an agent without the mesh roots cannot trust the server, so the pod waits for
    // the ConfigMap the signing server distributes rather than start an agent that cannot work.
    [CA_VOLUME]: {
      name: CA_VOLUME,
      configMap: { name: config.trustBundleConfigMapName, items: [{ key: "ca.crt", path: "ca.crt" }] },
    },
  };
}

export const ENVOY_SDS_MOUNT = { name: SDS_VOLUME, mountPath: SDS_DIR } as const;

export function agentContainer(config: InjectionConfig): Record<string, unknown> {
  const limits: Record<string, string> = { memory: config.resources.memoryLimit };
  if (config.resources.cpuLimit !== "") limits.cpu = config.resources.cpuLimit;
  return {
    name: AGENT_CONTAINER,
    image: config.agentImage,
    imagePullPolicy: config.agentImagePullPolicy,
    // Native sidecar (KEP-753): started before the containers that follow it and before Envoy,
    // restarted if it exits, stopped after the main containers.
    restartPolicy: "Always",
    args: [
      "agent",
      "--server",
      config.signingServer,
      "--ca-bundle",
      `${CA_DIR}/ca.crt`,
      "--token-file",
      `${TOKEN_DIR}/token`,
      "--sds-socket",
      `${SDS_DIR}/sds.sock`,
      // Same UID as Envoy, so the owner-only socket is reachable by Envoy and nobody else.
      "--sds-socket-mode",
      "0600",
      "--trust-domain",
      config.trustDomain,
    ],
    env: [
      { name: "POD_NAMESPACE", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
      { name: "SERVICE_ACCOUNT", valueFrom: { fieldRef: { fieldPath: "spec.serviceAccountName" } } },
      // NODE_OPTIONS (the V8 flags the bundle's code cache was made under) and glibc malloc's
      // thresholds (common/agent-node-options.ts).
      ...Object.entries(AGENT_ENV).map(([name, value]) => ({ name, value })),
    ],
    resources: {
      requests: { cpu: config.resources.cpuRequest, memory: config.resources.memoryRequest },
      limits,
    },
    // No kubelet probes, deliberately. The kubelet probes the pod IP, and osm-init redirects every
    // inbound port except Envoy's own (15010, 15901-15903) to Envoy's inbound listener, which is not
    // up while the agent starts; the agent's admin port is loopback-only anyway. An exec probe would
    // fork a second Node process inside the agent's 96Mi limit. Instead: Envoy keeps listeners whose
    // secrets come over SDS warming until the agent serves them, and an agent that exits is
    // restarted by the kubelet (restartPolicy Always) with its restarts visible on the pod.
    securityContext: {
      // Envoy's UID: osm-init's iptables rules return this UID's outbound traffic untouched, so the
      // agent reaches the signing server while Envoy is not up yet.
      runAsUser: config.envoyUid,
      runAsGroup: config.envoyUid,
      runAsNonRoot: true,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      privileged: false,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    },
    volumeMounts: [
      { name: SDS_VOLUME, mountPath: SDS_DIR },
      { name: TOKEN_VOLUME, mountPath: TOKEN_DIR, readOnly: true },
      { name: CA_VOLUME, mountPath: CA_DIR, readOnly: true },
    ],
    terminationMessagePolicy: "FallbackToLogsOnError",
  };
}
