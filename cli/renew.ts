// `osm-cert renew`: the operator's renew-now for a suspected compromise (issue 9). It adds one
// scoped order (--all, --namespace NS or --identity NS/SA) to the store every signing server
// follows: renew-orders.json in the CA directory (--ca-dir), or the osm-cert-renew-orders ConfigMap
// in the OSM namespace (--kubeconfig, or in-cluster). Each server writes the order on the
// WatchTrustBundle streams of the matching agents only; each agent renews once, at a random moment
// within --window, so the signer is not stampeded.

import { formatDuration } from "../common/duration.js";
import { FlagError, type FlagTable, parseFlags } from "../common/flags.js";
import { isDnsLabel } from "../common/identity.js";
import { inClusterConfig, KubeClient, loadKubeconfig } from "../server/kubernetes/client.js";
import {
  ConfigMapRenewOrderStore,
  DirectoryRenewOrderStore,
  type RenewOrderStore,
} from "../server/renew/renew-order-stores.js";
import {
  describeScope,
  MAX_WINDOW_MS,
  newOrder,
  parseIdentityScope,
  type RenewScope,
} from "../server/renew/renew-orders.js";

const FLAGS = {
  all: { kind: "boolean", help: "every agent of the mesh renews" },
  namespace: { kind: "string", help: "the agents of this namespace renew" },
  identity: { kind: "string", help: "the agents of this identity renew: NAMESPACE/SERVICE-ACCOUNT" },
  window: {
    kind: "duration",
    help: "each agent renews at a random moment within this window (spreads the signing load)",
    default: "2m",
  },
  "ca-dir": { kind: "string", help: "directory mode: Tresor's CA directory (the servers' --ca-dir)" },
  kubeconfig: {
    kind: "string",
    help: "Kubernetes mode: kubeconfig (exec credential plugins work); in-cluster credentials when unset",
    env: "KUBECONFIG",
  },
  context: { kind: "string", help: "kubeconfig context (default: its current-context)" },
  "osm-namespace": {
    kind: "string",
    help: "Kubernetes mode: the namespace the signing servers run in",
    default: "osm-system",
    env: "OSM_NAMESPACE",
  },
} as const satisfies FlagTable;

function scopeOf(flags: { all: boolean; namespace?: string; identity?: string }): RenewScope {
  const chosen = [flags.all, flags.namespace !== undefined, flags.identity !== undefined].filter(Boolean);
  if (chosen.length !== 1) {
    throw new FlagError("renew: choose exactly one of --all, --namespace NS, --identity NS/SA");
  }
  if (flags.all) return { kind: "all" };
  if (flags.namespace !== undefined) {
    if (!isDnsLabel(flags.namespace)) {
      throw new FlagError(`renew: invalid --namespace: "${flags.namespace}" is not a namespace name`);
    }
    return { kind: "namespace", namespace: flags.namespace };
  }
  try {
    return parseIdentityScope(flags.identity as string);
  } catch (error) {
    throw new FlagError(`renew: invalid --identity: ${(error as Error).message}`);
  }
}

export async function renewCommand(argv: readonly string[]): Promise<void> {
  const flags = parseFlags("renew", FLAGS, argv);
  const scope = scopeOf(flags);
  if (flags.window > MAX_WINDOW_MS) {
    throw new FlagError(`renew: invalid --window: at most ${formatDuration(MAX_WINDOW_MS)}`);
  }
  let kube: KubeClient | null = null;
  let store: RenewOrderStore;
  if (flags["ca-dir"] !== undefined) {
    store = new DirectoryRenewOrderStore(flags["ca-dir"]);
  } else {
    const config =
      flags.kubeconfig !== undefined
        ? await loadKubeconfig(
            flags.kubeconfig,
            flags.context === undefined ? {} : { context: flags.context },
          )
        : process.env.KUBERNETES_SERVICE_HOST
          ? await inClusterConfig()
          : null;
    if (config === null) {
      throw new FlagError("renew: give --ca-dir (directory mode) or --kubeconfig (Kubernetes mode)");
    }
    kube = new KubeClient({ config, userAgent: "osm-cert-renew" });
    store = new ConfigMapRenewOrderStore({ client: kube, namespace: flags["osm-namespace"] });
  }
  try {
    const order = newOrder(scope, flags.window);
    const orders = await store.add(order);
    process.stdout.write(
      `renew: order ${order.id} written to ${store.where}: agents of ${describeScope(scope)} whose certificate was obtained before ` +
        `${order.before.toISOString()} renew within ${formatDuration(flags.window)} (${orders.length} order(s) kept)\n`,
    );
  } finally {
    await kube?.close();
  }
}
