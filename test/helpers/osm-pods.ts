// Pods as the API server hands them to our webhook: after OSM's injector (openservicemesh/osm
// pkg/injector) has appended `osm-init` to initContainers, `envoy` to containers and its bootstrap
// Secret volume, and after the built-in admission plugins filled in the ServiceAccount and its
// token volume. Shapes follow OSM v1.2's injector output; values are realistic, not minimal.

import { randomUUID } from "node:crypto";

export type Json = Record<string, unknown>;

export const ENVOY_UID = 1500;

export function osmInitContainer(): Json {
  return {
    name: "osm-init",
    image: "openservicemesh/init:v1.2.4",
    command: ["/bin/sh"],
    args: [
      "-c",
      "iptables-restore --noflush <<EOF\n# OSM sidecar interception rules\n*nat\n:OSM_PROXY_INBOUND - [0:0]\n:OSM_PROXY_IN_REDIRECT - [0:0]\n:OSM_PROXY_OUTBOUND - [0:0]\n:OSM_PROXY_OUT_REDIRECT - [0:0]\n-A OSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003\n-A PREROUTING -p tcp -j OSM_PROXY_INBOUND\n-A OSM_PROXY_INBOUND -p tcp --dport 15010 -j RETURN\n-A OSM_PROXY_INBOUND -p tcp --dport 15901 -j RETURN\n-A OSM_PROXY_INBOUND -p tcp --dport 15902 -j RETURN\n-A OSM_PROXY_INBOUND -p tcp --dport 15903 -j RETURN\n-A OSM_PROXY_INBOUND -p tcp --dport 15904 -j RETURN\n-A OSM_PROXY_INBOUND -p tcp -j OSM_PROXY_IN_REDIRECT\n-A OSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-port 15001\n-A OSM_PROXY_OUT_REDIRECT -p tcp --dport 15000 -j ACCEPT\n-A OUTPUT -p tcp -j OSM_PROXY_OUTBOUND\n-A OSM_PROXY_OUTBOUND -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1500 -j OSM_PROXY_IN_REDIRECT\n-A OSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner 1500 -j RETURN\n-A OSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN\n-A OSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN\n-A OSM_PROXY_OUTBOUND -j OSM_PROXY_OUT_REDIRECT\nCOMMIT\nEOF\n",
    ],
    securityContext: {
      privileged: false,
      capabilities: { add: ["NET_ADMIN"] },
      runAsNonRoot: false,
      runAsUser: 0,
    },
    resources: {},
    terminationMessagePath: "/dev/termination-log",
    terminationMessagePolicy: "File",
    imagePullPolicy: "IfNotPresent",
  };
}

export function osmEnvoyContainer(serviceAccount: string, namespace: string, extraMounts: Json[] = []): Json {
  return {
    name: "envoy",
    image: "envoyproxy/envoy-distroless:v1.22.2",
    imagePullPolicy: "IfNotPresent",
    command: ["envoy"],
    args: [
      "--log-level",
      "error",
      "--config-path",
      "/etc/envoy/bootstrap.yaml",
      "--service-cluster",
      `${serviceAccount}.${namespace}`,
    ],
    ports: [
      { name: "proxy-admin", containerPort: 15000, protocol: "TCP" },
      { name: "proxy-inbound", containerPort: 15003, protocol: "TCP" },
      { name: "proxy-metrics", containerPort: 15010, protocol: "TCP" },
      { name: "readiness-port", containerPort: 15902, protocol: "TCP" },
    ],
    env: [
      { name: "POD_UID", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "metadata.uid" } } },
      { name: "POD_NAME", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "metadata.name" } } },
      {
        name: "POD_NAMESPACE",
        valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "metadata.namespace" } },
      },
      { name: "POD_IP", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "status.podIP" } } },
      {
        name: "SERVICE_ACCOUNT",
        valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "spec.serviceAccountName" } },
      },
    ],
    resources: {},
    securityContext: { allowPrivilegeEscalation: false, runAsUser: ENVOY_UID },
    volumeMounts: [
      { name: "envoy-bootstrap-config-volume", readOnly: true, mountPath: "/etc/envoy" },
      {
        name: "kube-api-access-x7k2p",
        readOnly: true,
        mountPath: "/var/run/secrets/kubernetes.io/serviceaccount",
      },
      ...extraMounts,
    ],
    terminationMessagePath: "/dev/termination-log",
    terminationMessagePolicy: "File",
  };
}

export interface OsmPodOptions {
  readonly namespace?: string;
  readonly serviceAccount?: string;
  /** App init containers, placed before osm-init as OSM appends its own. */
  readonly appInitContainers?: Json[];
  readonly appVolumes?: Json[];
  readonly podSecurityContext?: Json;
  readonly annotations?: Record<string, string>;
}

/** bookstore-v1 from OSM's demo, as it reaches a webhook called after OSM's injector. */
export function osmInjectedPod(options: OsmPodOptions = {}): Json {
  const namespace = options.namespace ?? "bookstore";
  const serviceAccount = options.serviceAccount ?? "bookstore";
  const proxyUuid = randomUUID();
  return {
    kind: "Pod",
    apiVersion: "v1",
    metadata: {
      generateName: "bookstore-v1-6c7d7b8d9f-",
      namespace,
      creationTimestamp: null,
      labels: {
        app: "bookstore",
        version: "v1",
        "pod-template-hash": "6c7d7b8d9f",
        "osm-proxy-uuid": proxyUuid,
      },
      annotations: {
        "prometheus.io/path": "/stats/prometheus",
        "prometheus.io/port": "15010",
        "prometheus.io/scrape": "true",
        ...options.annotations,
      },
      ownerReferences: [
        {
          apiVersion: "apps/v1",
          kind: "ReplicaSet",
          name: "bookstore-v1-6c7d7b8d9f",
          uid: randomUUID(),
          controller: true,
          blockOwnerDeletion: true,
        },
      ],
    },
    spec: {
      volumes: [
        ...(options.appVolumes ?? []),
        {
          name: "kube-api-access-x7k2p",
          projected: {
            sources: [
              { serviceAccountToken: { expirationSeconds: 3607, path: "token" } },
              { configMap: { name: "kube-root-ca.crt", items: [{ key: "ca.crt", path: "ca.crt" }] } },
              {
                downwardAPI: {
                  items: [
                    { path: "namespace", fieldRef: { apiVersion: "v1", fieldPath: "metadata.namespace" } },
                  ],
                },
              },
            ],
            defaultMode: 420,
          },
        },
        {
          name: "envoy-bootstrap-config-volume",
          secret: { secretName: `envoy-bootstrap-config-${proxyUuid}` },
        },
      ],
      initContainers: [...(options.appInitContainers ?? []), osmInitContainer()],
      containers: [
        {
          name: "bookstore",
          image: "openservicemesh/bookstore:v1.2.4",
          command: ["/bookstore"],
          args: ["--port", "14001"],
          ports: [{ containerPort: 14001, name: "web", protocol: "TCP" }],
          env: [{ name: "IDENTITY", value: "bookstore-v1" }],
          resources: {},
          readinessProbe: {
            httpGet: { path: "/osm-readiness-probe/readiness", port: 15902, scheme: "HTTP" },
            timeoutSeconds: 1,
            periodSeconds: 10,
            successThreshold: 1,
            failureThreshold: 3,
          },
          volumeMounts: [
            {
              name: "kube-api-access-x7k2p",
              readOnly: true,
              mountPath: "/var/run/secrets/kubernetes.io/serviceaccount",
            },
          ],
          terminationMessagePath: "/dev/termination-log",
          terminationMessagePolicy: "File",
          imagePullPolicy: "IfNotPresent",
        },
        osmEnvoyContainer(serviceAccount, namespace),
      ],
      restartPolicy: "Always",
      terminationGracePeriodSeconds: 30,
      dnsPolicy: "ClusterFirst",
      serviceAccountName: serviceAccount,
      serviceAccount,
      securityContext: options.podSecurityContext ?? {},
      schedulerName: "default-scheduler",
      tolerations: [
        {
          key: "node.kubernetes.io/not-ready",
          operator: "Exists",
          effect: "NoExecute",
          tolerationSeconds: 300,
        },
        {
          key: "node.kubernetes.io/unreachable",
          operator: "Exists",
          effect: "NoExecute",
          tolerationSeconds: 300,
        },
      ],
      priority: 0,
      enableServiceLinks: true,
      preemptionPolicy: "PreemptLowerPriority",
    },
    status: {},
  };
}

/** The AdmissionReview the API server sends for a pod CREATE. */
export function admissionReview(pod: Json, overrides: Json = {}): Json {
  const metadata = (pod.metadata ?? {}) as Json;
  return {
    kind: "AdmissionReview",
    apiVersion: "admission.k8s.io/v1",
    request: {
      uid: randomUUID(),
      kind: { group: "", version: "v1", kind: "Pod" },
      resource: { group: "", version: "v1", resource: "pods" },
      requestKind: { group: "", version: "v1", kind: "Pod" },
      requestResource: { group: "", version: "v1", resource: "pods" },
      namespace: metadata.namespace ?? "bookstore",
      operation: "CREATE",
      userInfo: {
        username: "system:serviceaccount:kube-system:replicaset-controller",
        uid: randomUUID(),
        groups: ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
      },
      object: pod,
      oldObject: null,
      dryRun: false,
      options: { kind: "CreateOptions", apiVersion: "meta.k8s.io/v1" },
      ...overrides,
    },
  };
}
