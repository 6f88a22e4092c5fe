// The webhook reads Tresor's root; it never makes one (CONTRACT.md): the signing server owns the
// root, and a webhook that created one on an empty store could race the server into two meshes.
// This store waits until the root exists, so the webhook can start before the server has.

import { setTimeout as sleep } from "node:timers/promises";
import { backoffDelay } from "../common/lifecycle.js";
import type { Logger } from "../common/logger.js";
import type { CaMaterial } from "../server/providers/tresor/ca-material.js";
import type { CaStore } from "../server/providers/tresor/tresor.js";

export interface WaitingCaStoreOptions {
  readonly store: Pick<CaStore, "describe" | "load" | "rotation">;
  readonly logger: Logger;
  readonly signal?: AbortSignal;
  readonly retryBaseMs?: number;
  readonly retryCapMs?: number;
}

export class WaitingCaStore implements CaStore {
  constructor(private readonly options: WaitingCaStoreOptions) {}

  describe(): string {
    return this.options.store.describe();
  }

  /** The root rotation state beside the root: the webhook follows it as the signing server does. */
  get rotation(): CaStore["rotation"] {
    return this.options.store.rotation;
  }

  /** Never null: waits (and retries API failures) until the root is there or the signal aborts. */
  async load(): Promise<CaMaterial> {
    const { store, logger, signal } = this.options;
    let reported = "";
    for (let attempt = 0; ; attempt++) {
      signal?.throwIfAborted();
      let why: string;
      try {
        const material = await store.load();
        if (material !== null) return material;
        why = "not created yet; waiting for the signing server to create it";
      } catch (error) {
        why = `unreadable (${(error as Error).message}); retrying`;
      }
      // One line per distinct reason, not one per retry.
      if (why !== reported) {
        logger.warn({ event: "ca.waiting", where: store.describe() }, `${store.describe()}: ${why}`);
        reported = why;
      }
      await sleep(
        backoffDelay(attempt, this.options.retryBaseMs ?? 500, this.options.retryCapMs ?? 10_000),
        undefined,
        signal === undefined ? undefined : { signal },
      );
    }
  }

  async createIfAbsent(_material: CaMaterial): Promise<CaMaterial> {
    throw new Error(`${this.describe()}: the webhook never creates the mesh root`);
  }
}
