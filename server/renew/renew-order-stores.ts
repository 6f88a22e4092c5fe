// Where renew-now orders live, apart from the root and its rotation state: a file in the CA
// directory (directory mode) or a ConfigMap in the OSM namespace (Kubernetes mode; orders are not
// secret, and the server already reads ConfigMaps). The CLI adds an order with a read-modify-write
// that cannot lose a concurrent one (rename of a complete file; resourceVersion in Kubernetes); every
// replica follows the store (a watch, and a poll in case the watch misses something) and hands each
// list it reads to its RenewOrderBook, which announces an order id once however often it is read.

import { watch as watchDirectory } from "node:fs";
import { mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  CONFIG_MAPS,
  type ConfigMap,
  isAlreadyExists,
  isConflict,
  isNotFound,
  type KubeClient,
} from "../kubernetes/client.js";
import {
  type OperatorRenewOrder,
  parseOrders,
  RENEW_ORDERS_CONFIG_MAP,
  RENEW_ORDERS_FILE,
  RENEW_ORDERS_KEY,
  RenewOrderError,
  serializeOrders,
  withOrder,
} from "./renew-orders.js";

export interface RenewOrderStore {
  /** For messages: where the orders live. */
  readonly where: string;
  read(): Promise<OperatorRenewOrder[]>;
  /** Adds `order` and returns the list as written. */
  add(order: OperatorRenewOrder): Promise<OperatorRenewOrder[]>;
  /** Calls `onOrders` with every list read (at once, on each change, and every `pollMs`), `onError` on bad reads. */
  follow(
    onOrders: (orders: OperatorRenewOrder[]) => void,
    onError: (error: Error) => void,
    pollMs: number,
  ): () => void;
}

/** Serializes follow's reads so a slow read cannot deliver an older list after a newer one. */
function reader(
  store: RenewOrderStore,
  onOrders: (o: OperatorRenewOrder[]) => void,
  onError: (e: Error) => void,
) {
  let chain = Promise.resolve();
  let stopped = false;
  return {
    read: () => {
      chain = chain.then(async () => {
        if (stopped) return;
        try {
          const orders = await store.read();
          if (!stopped) onOrders(orders);
        } catch (error) {
          if (!stopped) onError(error as Error);
        }
      });
    },
    stop: () => {
      stopped = true;
    },
  };
}

export class DirectoryRenewOrderStore implements RenewOrderStore {
  readonly path: string;
  private readonly lockPath: string;

  constructor(readonly dir: string) {
    this.path = join(dir, RENEW_ORDERS_FILE);
    this.lockPath = `${this.path}.lock`;
  }

  get where(): string {
    return this.path;
  }

  async read(): Promise<OperatorRenewOrder[]> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw new RenewOrderError(`cannot read ${this.path}: ${(error as Error).message}`);
    }
    try {
      return parseOrders(text);
    } catch (error) {
      throw new RenewOrderError(`${this.path}: ${(error as Error).message}`);
    }
  }

  async add(order: OperatorRenewOrder): Promise<OperatorRenewOrder[]> {
    await mkdir(this.dir, { recursive: true });
    await this.lock();
    try {
      const orders = withOrder(await this.read(), order);
      // A complete file under a temporary name, then renamed over: a reader never sees half of it.
      const temporary = `${this.path}.${process.pid}.tmp`;
      const file = await open(temporary, "w", 0o644);
      try {
        await file.writeFile(serializeOrders(orders));
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(temporary, this.path);
      return orders;
    } finally {
      await rm(this.lockPath, { force: true });
    }
  }

  /** Two operators adding at once must not lose an order: an exclusive lock file, stale after 30 s. */
  private async lock(): Promise<void> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await (await open(this.lockPath, "wx", 0o600)).close();
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      const held = await stat(this.lockPath).catch(() => null);
      if (held !== null && Date.now() - held.mtimeMs > 30_000) {
        await rm(this.lockPath, { force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new RenewOrderError(
          `${this.lockPath} is held by another writer; if none runs, remove the file and retry`,
        );
      }
      await sleep(50);
    }
  }

  follow(
    onOrders: (orders: OperatorRenewOrder[]) => void,
    onError: (error: Error) => void,
    pollMs: number,
  ): () => void {
    const r = reader(this, onOrders, onError);
    r.read();
    let watcher: ReturnType<typeof watchDirectory> | undefined;
    try {
      watcher = watchDirectory(this.dir, (_event, name) => {
        if (name === null || name === RENEW_ORDERS_FILE) r.read();
      });
      watcher.on("error", () => watcher?.close());
    } catch {
      // No directory watch (missing directory, odd filesystems): the poll alone follows.
    }
    const poll = setInterval(r.read, pollMs);
    poll.unref();
    return () => {
      r.stop();
      clearInterval(poll);
      watcher?.close();
    };
  }
}

export class ConfigMapRenewOrderStore implements RenewOrderStore {
  private readonly client: KubeClient;
  private readonly namespace: string;
  private readonly name: string;

  constructor(options: { client: KubeClient; namespace: string; name?: string }) {
    this.client = options.client;
    this.namespace = options.namespace;
    this.name = options.name ?? RENEW_ORDERS_CONFIG_MAP;
  }

  get where(): string {
    return `ConfigMap ${this.namespace}/${this.name}`;
  }

  private ordersOf(map: ConfigMap): OperatorRenewOrder[] {
    const text = map.data?.[RENEW_ORDERS_KEY];
    if (text === undefined) return [];
    try {
      return parseOrders(text);
    } catch (error) {
      throw new RenewOrderError(`${this.where} key ${RENEW_ORDERS_KEY}: ${(error as Error).message}`);
    }
  }

  async read(): Promise<OperatorRenewOrder[]> {
    try {
      return this.ordersOf(await this.client.get(CONFIG_MAPS, this.name, { namespace: this.namespace }));
    } catch (error) {
      if (isNotFound(error)) return [];
      throw error;
    }
  }

  async add(order: OperatorRenewOrder): Promise<OperatorRenewOrder[]> {
    for (let attempt = 0; attempt < 8; attempt++) {
      let current: ConfigMap | null = null;
      try {
        current = await this.client.get(CONFIG_MAPS, this.name, { namespace: this.namespace });
      } catch (error) {
        if (!isNotFound(error)) throw error;
      }
      const existing = current === null ? [] : this.ordersOf(current);
      if (existing.some((o) => o.id === order.id)) return existing; // an earlier attempt landed
      const orders = withOrder(existing, order);
      const data = { [RENEW_ORDERS_KEY]: serializeOrders(orders) };
      try {
        if (current === null) {
          await this.client.create(
            CONFIG_MAPS,
            {
              metadata: {
                name: this.name,
                namespace: this.namespace,
                labels: { "app.kubernetes.io/managed-by": "osm-cert" },
              },
              data,
            },
            { namespace: this.namespace },
          );
        } else {
          await this.client.update(CONFIG_MAPS, { ...current, data: { ...current.data, ...data } });
        }
        return orders;
      } catch (error) {
        // Somebody else wrote first: read their list and add ours to it.
        if (isConflict(error) || isAlreadyExists(error)) continue;
        throw error;
      }
    }
    throw new RenewOrderError(`${this.where} kept changing under us; try again`);
  }

  follow(
    onOrders: (orders: OperatorRenewOrder[]) => void,
    onError: (error: Error) => void,
    pollMs: number,
  ): () => void {
    const r = reader(this, onOrders, onError);
    const stop = new AbortController();
    r.read();
    const poll = setInterval(r.read, pollMs);
    poll.unref();
    void (async () => {
      let failures = 0;
      while (!stop.signal.aborted) {
        try {
          for await (const event of this.client.watch(CONFIG_MAPS, {
            namespace: this.namespace,
            fieldSelector: `metadata.name=${this.name}`,
            signal: stop.signal,
          })) {
            failures = 0;
            if (event.type === "BOOKMARK") continue;
            if (event.type === "DELETED") onOrders([]);
            else
              try {
                onOrders(this.ordersOf(event.object));
              } catch (error) {
                onError(error as Error);
              }
          }
        } catch (error) {
          if (stop.signal.aborted) return;
          onError(error as Error);
          failures++;
        }
        // Watch again (after a normal end at once; after failures with a capped backoff).
        await sleep(Math.min(30_000, failures === 0 ? 0 : 500 * 2 ** failures), undefined, {
          signal: stop.signal,
        }).catch(() => undefined);
      }
    })();
    return () => {
      r.stop();
      clearInterval(poll);
      stop.abort();
    };
  }
}
