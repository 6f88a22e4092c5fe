// Where rotation state and every rotated root live. The directory implementation keeps
// `rotation.json` next to ca.crt/private.key/expiration and each root of a rotation under
// `roots/<id>/` (the same three files, published with link(2) by DirectoryCaStore, key 0600). The
// state is replaced with write-then-rename, so a reader sees the old state or the new one, never half;
// a root once published is never rewritten. Kubernetes mode will implement the same interface with
// Secrets in the OSM namespace.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { type FSWatcher, watch } from "chokidar";
import { writeFileAtomic } from "../../../common/files.js";
import { type CaMaterial, CaMaterialError } from "./ca-material.js";
import { DirectoryCaStore } from "./directory-store.js";
import { parseRotationState, type RotationState, serializeRotationState } from "./rotation-state.js";

export interface RotationStore {
  describe(): string;
  /** The validated state, null when no rotation ever started. */
  readState(): Promise<RotationState | null>;
  writeState(state: RotationState): Promise<void>;
  /** A rotated root's material; a missing or partial set is an error. */
  readRoot(id: string): Promise<CaMaterial>;
  /** Publishes a root under `id` unless present; an existing different root under that id is an error. */
  writeRoot(id: string, material: CaMaterial): Promise<void>;
  /** Makes `material` the store's plain root (what a reader without rotation support sees). */
  promote(material: CaMaterial): Promise<void>;
  /** Calls `onChange` (debounced) when the state may have changed; returns the stop function. */
  watch(onChange: () => void): () => void;
}

export const ROTATION_FILE = "rotation.json";
const ROOTS_DIR = "roots";

export class DirectoryRotationStore implements RotationStore {
  constructor(readonly directory: string) {}

  describe(): string {
    return `CA directory ${this.directory}`;
  }

  async readState(): Promise<RotationState | null> {
    let text: string;
    try {
      text = await readFile(join(this.directory, ROTATION_FILE), "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw error;
    }
    return parseRotationState(text, `${this.describe()}/${ROTATION_FILE}`);
  }

  async writeState(state: RotationState): Promise<void> {
    await writeFileAtomic(join(this.directory, ROTATION_FILE), serializeRotationState(state), 0o644);
  }

  async readRoot(id: string): Promise<CaMaterial> {
    const store = this.rootStore(id);
    const material = await store.load();
    if (material === null) {
      throw new CaMaterialError(`${store.describe()}: the root named by ${ROTATION_FILE} is missing`);
    }
    return material;
  }

  async writeRoot(id: string, material: CaMaterial): Promise<void> {
    const winner = await this.rootStore(id).createIfAbsent(material);
    if (winner.caCert.trim() !== material.caCert.trim()) {
      throw new CaMaterialError(`${this.rootStore(id).describe()} already holds a different root`);
    }
  }

  async promote(material: CaMaterial): Promise<void> {
    // Each file is renamed into place; hard links under roots/ keep the replaced root intact.
    await writeFileAtomic(join(this.directory, "private.key"), material.privateKey, 0o600);
    await writeFileAtomic(join(this.directory, "ca.crt"), material.caCert, 0o644);
    await writeFileAtomic(join(this.directory, "expiration"), material.expiration, 0o644);
  }

  watch(onChange: () => void): () => void {
    let timer: NodeJS.Timeout | undefined;
    const fire = () => {
      clearTimeout(timer);
      timer = setTimeout(onChange, 100);
    };
    const watcher: FSWatcher = watch(this.directory, { ignoreInitial: true, depth: 0 });
    watcher.on("all", (_event, path) => {
      if (path.endsWith(ROTATION_FILE)) fire();
    });
    watcher.on("error", () => {});
    return () => {
      clearTimeout(timer);
      void watcher.close();
    };
  }

  private rootStore(id: string): DirectoryCaStore {
    if (!/^[0-9a-f]{16}$/.test(id)) throw new CaMaterialError(`invalid root id ${JSON.stringify(id)}`);
    return new DirectoryCaStore(join(this.directory, ROOTS_DIR, id));
  }
}
