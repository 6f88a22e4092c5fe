// The renew-now orders a server has in force, answered per caller. The server, not the agent,
// decides whom an order concerns: it knows each watcher's authenticated identity, so a scoped order
// is written only on the streams it matches (nobody else gets a message, an agent need not be
// trusted to filter, and no agent learns which other identities were ordered to renew). The order a
// watcher sees is the newest that matches it, the root rotation's order included: renewing once
// after the newest order also satisfies every older one, so agents need no list, only the one
// `renew_before` the bundle message already carries.

import type { ServiceIdentity } from "../../common/identity.js";
import type { RenewOrder } from "../providers/provider.js";
import { matchesScope, type OperatorRenewOrder } from "./renew-orders.js";

/** What SigningService needs: the order for one caller, and word of new orders. */
export interface RenewOrderSource {
  orderFor(identity: ServiceIdentity): RenewOrder | null;
  /** Told the orders that are new since the last call; returns the unsubscribe. */
  onNewOrders(listener: (orders: readonly OperatorRenewOrder[]) => void): () => void;
}

export class RenewOrderBook implements RenewOrderSource {
  private orders: readonly OperatorRenewOrder[] = [];
  private readonly seen = new Set<string>();
  private readonly listeners = new Set<(orders: readonly OperatorRenewOrder[]) => void>();

  /** `rotationOrder`: the provider's order (root rotation phase 3), which concerns everyone. */
  constructor(private readonly rotationOrder: () => RenewOrder | null = () => null) {}

  /** Replaces the operator orders with what the store holds now; announces only orders not seen before. */
  replace(orders: readonly OperatorRenewOrder[]): readonly OperatorRenewOrder[] {
    const fresh = orders.filter((o) => !this.seen.has(o.id));
    this.orders = orders;
    for (const o of fresh) this.seen.add(o.id);
    if (fresh.length > 0) for (const listener of this.listeners) listener(fresh);
    return fresh;
  }

  get size(): number {
    return this.orders.length;
  }

  orderFor(identity: ServiceIdentity): RenewOrder | null {
    let best = this.rotationOrder();
    for (const order of this.orders) {
      if (!matchesScope(order.scope, identity)) continue;
      if (best === null || order.before.getTime() > best.before.getTime()) {
        best = { before: order.before, windowMs: order.windowMs };
      }
    }
    return best;
  }

  onNewOrders(listener: (orders: readonly OperatorRenewOrder[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
