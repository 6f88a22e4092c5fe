// Wires a server replica to the operator's renew-now orders: the store that goes with the server's
// mode (the CA directory, else the Kubernetes API), followed into a RenewOrderBook that the signing
// service consults per caller. Every replica follows the same store, so an order reaches the
// agents of every replica; an order id is announced once however often the store is read.

import type { Logger } from "../../common/logger.js";
import type { MetricsRegistry } from "../../common/metrics.js";
import type { KubeClient } from "../kubernetes/client.js";
import type { CertificateProvider } from "../providers/provider.js";
import { RenewOrderBook } from "./renew-order-book.js";
import {
  ConfigMapRenewOrderStore,
  DirectoryRenewOrderStore,
  type RenewOrderStore,
} from "./renew-order-stores.js";
import { describeScope } from "./renew-orders.js";

/** How often a replica re-reads the orders whatever its watch says. */
export const RENEW_ORDERS_POLL_MS = 5_000;

export function renewOrderStore(
  caDir: string | undefined,
  kube: KubeClient | null,
  osmNamespace: string,
): RenewOrderStore | null {
  if (caDir !== undefined) return new DirectoryRenewOrderStore(caDir);
  if (kube !== null) return new ConfigMapRenewOrderStore({ client: kube, namespace: osmNamespace });
  return null;
}

export function followRenewOrders(options: {
  readonly store: RenewOrderStore | null;
  readonly provider: CertificateProvider;
  readonly logger: Logger;
  readonly metrics: MetricsRegistry;
  readonly pollMs?: number;
}): { book: RenewOrderBook; stop: () => void } {
  const { store, provider, logger, metrics } = options;
  const book = new RenewOrderBook(() => provider.renewOrder?.() ?? null);
  if (store === null) {
    logger.info(
      { event: "renew_orders.unavailable" },
      "no CA directory and no Kubernetes API: operator renew orders (osm-cert renew) cannot reach this server",
    );
    return { book, stop: () => undefined };
  }
  const received = metrics
    .counter("osm_cert_server_renew_orders_total", "Operator renew-now orders received, by scope kind.")
    .zero({ scope: "all" });
  const inForce = metrics.gauge(
    "osm_cert_server_renew_orders",
    "Operator renew-now orders kept in the store.",
  );
  let failing = false;
  const stop = store.follow(
    (orders) => {
      failing = false;
      for (const order of book.replace(orders)) {
        received.inc({ scope: order.scope.kind });
        logger.info(
          {
            event: "renew_order.received",
            id: order.id,
            scope: describeScope(order.scope),
            before: order.before.toISOString(),
            windowMs: order.windowMs,
          },
          "operator renew-now order: matching agents renew within the window",
        );
      }
      inForce.set(book.size);
    },
    (error) => {
      // One line per run of failures, not one per poll.
      if (failing) return;
      failing = true;
      logger.error(
        { event: "renew_orders.unreadable", where: store.where, error: error.message },
        "cannot read the renew orders; keeping the ones in force",
      );
    },
    options.pollMs ?? RENEW_ORDERS_POLL_MS,
  );
  return { book, stop };
}
