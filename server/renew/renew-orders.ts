// Operator renew-now orders (issue 9, `osm-cert renew`): "every agent of this scope whose certificate
// was obtained before `before` renews within `windowMs`". Orders are data kept apart from the root
// and its rotation state (their own file in the CA directory, their own ConfigMap in Kubernetes mode),
// written by the CLI and followed by every server replica. Each order has an id, so the same list
// read twice (a re-delivered watch event, a poll after a watch) announces nothing twice.

import { randomUUID } from "node:crypto";
import { isDnsLabel, isDnsSubdomain, type ServiceIdentity } from "../../common/identity.js";

export type RenewScope =
  | { readonly kind: "all" }
  | { readonly kind: "namespace"; readonly namespace: string }
  | { readonly kind: "identity"; readonly namespace: string; readonly serviceAccount: string };

export interface OperatorRenewOrder {
  readonly id: string;
  readonly scope: RenewScope;
  /** Certificates obtained before this time renew. */
  readonly before: Date;
  /** Each agent renews after a random delay in [0, windowMs). */
  readonly windowMs: number;
}

/** The file in the CA directory (directory mode). */
export const RENEW_ORDERS_FILE = "renew-orders.json";
/** The ConfigMap in the OSM namespace (Kubernetes mode) and its key. */
export const RENEW_ORDERS_CONFIG_MAP = "osm-cert-renew-orders";
export const RENEW_ORDERS_KEY = "orders.json";

/** Orders older than this are dropped when a new one is written: every certificate they covered is gone. */
export const ORDER_RETENTION_MS = 7 * 86_400_000;
/** At most this many orders are kept (the newest); a matching newer order covers an older one anyway. */
export const MAX_ORDERS = 64;
/** The largest window an order may ask for: a renew-now that takes longer than a day is not "now". */
export const MAX_WINDOW_MS = 86_400_000;

export class RenewOrderError extends Error {
  readonly code = "ERR_OSM_CERT_RENEW_ORDER";
}

export function matchesScope(scope: RenewScope, identity: ServiceIdentity): boolean {
  switch (scope.kind) {
    case "all":
      return true;
    case "namespace":
      return scope.namespace === identity.namespace;
    case "identity":
      return scope.namespace === identity.namespace && scope.serviceAccount === identity.serviceAccount;
  }
}

export function describeScope(scope: RenewScope): string {
  switch (scope.kind) {
    case "all":
      return "every identity";
    case "namespace":
      return `namespace ${scope.namespace}`;
    case "identity":
      return `identity ${scope.namespace}/${scope.serviceAccount}`;
  }
}

/** `NS/SA` as the CLI takes it. */
export function parseIdentityScope(text: string): RenewScope {
  const [namespace, serviceAccount, extra] = text.split("/");
  if (
    extra !== undefined ||
    namespace === undefined ||
    serviceAccount === undefined ||
    !isDnsLabel(namespace) ||
    !isDnsSubdomain(serviceAccount)
  ) {
    throw new RenewOrderError(`"${text}" is not NAMESPACE/SERVICE-ACCOUNT (e.g. bookstore/bookstore-v2)`);
  }
  return { kind: "identity", namespace, serviceAccount };
}

export function newOrder(scope: RenewScope, windowMs: number, now = new Date()): OperatorRenewOrder {
  if (!Number.isFinite(windowMs) || windowMs < 0 || windowMs > MAX_WINDOW_MS) {
    throw new RenewOrderError(`window ${windowMs} ms is outside 0..${MAX_WINDOW_MS} ms`);
  }
  return { id: randomUUID(), scope, before: now, windowMs };
}

/** The list with `order` added, orders past retention dropped and at most MAX_ORDERS kept. */
export function withOrder(
  orders: readonly OperatorRenewOrder[],
  order: OperatorRenewOrder,
  now = Date.now(),
): OperatorRenewOrder[] {
  return [...orders.filter((o) => now - o.before.getTime() < ORDER_RETENTION_MS && o.id !== order.id), order]
    .sort((a, b) => a.before.getTime() - b.before.getTime())
    .slice(-MAX_ORDERS);
}

export function serializeOrders(orders: readonly OperatorRenewOrder[]): string {
  const json = orders.map((o) => ({
    id: o.id,
    scope: o.scope,
    before: o.before.toISOString(),
    windowMs: o.windowMs,
  }));
  return `${JSON.stringify({ version: 1, orders: json }, null, 2)}\n`;
}

/** Reads what serializeOrders wrote; anything else is refused whole with a message naming the fault. */
export function parseOrders(text: string): OperatorRenewOrder[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (error) {
    throw new RenewOrderError(`renew orders are not JSON: ${(error as Error).message}`);
  }
  const root = doc as { version?: unknown; orders?: unknown };
  if (typeof doc !== "object" || doc === null || root.version !== 1 || !Array.isArray(root.orders)) {
    throw new RenewOrderError('renew orders must be {"version": 1, "orders": [...]}');
  }
  if (root.orders.length > MAX_ORDERS * 4)
    throw new RenewOrderError(`more than ${MAX_ORDERS * 4} renew orders`);
  return root.orders.map((entry: unknown, i: number) => parseOrder(entry, `order ${i}`));
}

function parseOrder(entry: unknown, where: string): OperatorRenewOrder {
  if (typeof entry !== "object" || entry === null) throw new RenewOrderError(`${where} is not an object`);
  const o = entry as Record<string, unknown>;
  if (typeof o.id !== "string" || o.id === "" || o.id.length > 64) {
    throw new RenewOrderError(`${where}: id must be a string of 1..64 characters`);
  }
  if (typeof o.before !== "string" || Number.isNaN(Date.parse(o.before))) {
    throw new RenewOrderError(`${where}: before is not a time`);
  }
  if (
    typeof o.windowMs !== "number" ||
    !Number.isInteger(o.windowMs) ||
    o.windowMs < 0 ||
    o.windowMs > MAX_WINDOW_MS
  ) {
    throw new RenewOrderError(`${where}: windowMs must be an integer in 0..${MAX_WINDOW_MS}`);
  }
  return { id: o.id, scope: parseScope(o.scope, where), before: new Date(o.before), windowMs: o.windowMs };
}

function parseScope(value: unknown, where: string): RenewScope {
  const s = (typeof value === "object" && value !== null ? value : {}) as Record<string, unknown>;
  if (s.kind === "all") return { kind: "all" };
  if (s.kind === "namespace" && typeof s.namespace === "string" && isDnsLabel(s.namespace)) {
    return { kind: "namespace", namespace: s.namespace };
  }
  if (
    s.kind === "identity" &&
    typeof s.namespace === "string" &&
    isDnsLabel(s.namespace) &&
    typeof s.serviceAccount === "string" &&
    isDnsSubdomain(s.serviceAccount)
  ) {
    return { kind: "identity", namespace: s.namespace, serviceAccount: s.serviceAccount };
  }
  throw new RenewOrderError(
    `${where}: scope must be {"kind":"all"}, {"kind":"namespace","namespace":NS} or {"kind":"identity","namespace":NS,"serviceAccount":SA}`,
  );
}
