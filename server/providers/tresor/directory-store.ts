// Tresor's embedded default outside Kubernetes: the three CA files in a local directory, the key
// readable by its owner only. Several processes starting on one empty directory end with one root:
// each file is published with link(2), which fails if the name exists, and `private.key` goes first
// as the claim; losers wait for the winner's set to be complete and read it.

import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { chmod, link, mkdir, readFile, stat, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { CaMaterial } from "./ca-material.js";
import { CaMaterialError } from "./ca-material.js";
import { DirectoryRotationStore } from "./rotation-store.js";

const FILES = { caCert: "ca.crt", privateKey: "private.key", expiration: "expiration" } as const;
type Field = keyof typeof FILES;
// Claim order: the key first, so a half-written set is never mistaken for a finished one.
const PUBLISH_ORDER: readonly Field[] = ["privateKey", "caCert", "expiration"];
const COMPLETE_WAIT_MS = 5_000;

export class DirectoryCaStore {
  constructor(readonly directory: string) {}

  /** Root rotation state and the rotated roots, kept in the same directory (issue 9). */
  get rotation(): DirectoryRotationStore {
    return new DirectoryRotationStore(this.directory);
  }

  describe(): string {
    return `CA directory ${this.directory}`;
  }

  /** The stored material, null when the directory holds none of the files. A partial set is an error. */
  async load(): Promise<CaMaterial | null> {
    const found = await this.readAll();
    const present = PUBLISH_ORDER.filter((f) => found[f] !== undefined);
    if (present.length === 0) return null;
    if (present.length < PUBLISH_ORDER.length) {
      const missing = PUBLISH_ORDER.filter((f) => found[f] === undefined).map((f) => FILES[f]);
      throw new CaMaterialError(
        `${this.describe()}: incomplete CA (missing ${missing.join(", ")}); refusing to overwrite it. ` +
          "Restore the missing files, or move the directory away to create a new root.",
      );
    }
    await this.checkKeyMode();
    return found as CaMaterial;
  }

  /** Publishes `material` unless another process got there first; returns whichever set won. */
  async createIfAbsent(material: CaMaterial): Promise<CaMaterial> {
    await mkdir(this.directory, { recursive: true, mode: 0o700 });
    const suffix = `.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    const published: string[] = [];
    for (const [index, field] of PUBLISH_ORDER.entries()) {
      const target = join(this.directory, FILES[field]);
      const temp = target + suffix;
      try {
        await writeFile(temp, material[field], { mode: field === "privateKey" ? 0o600 : 0o644, flag: "wx" });
        await link(temp, target);
        published.push(target);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "EEXIST" && index === 0) return this.awaitWinner();
        // A full disk, a file-size limit, a read-only mount: take back our half-published set, so
        // the next start finds an empty directory instead of an "incomplete CA" it must refuse.
        for (const file of published.reverse()) await unlink(file).catch(() => {});
        throw new CaMaterialError(
          `${this.describe()}: could not write ${FILES[field]}: ${(error as Error).message} ` +
            "(disk full, read-only or over a file-size limit?); nothing was kept; fix it and try again",
        );
      } finally {
        await unlink(temp).catch(() => {});
      }
    }
    return material;
  }

  private async awaitWinner(): Promise<CaMaterial> {
    const deadline = Date.now() + COMPLETE_WAIT_MS;
    for (;;) {
      try {
        const loaded = await this.load();
        if (loaded !== null) return loaded;
        if (Date.now() >= deadline) {
          throw new CaMaterialError(
            `${this.describe()}: another process claimed the CA and then withdrew it; start again`,
          );
        }
      } catch (error) {
        if (Date.now() >= deadline) throw error;
      }
      await sleep(50);
    }
  }

  private async readAll(): Promise<Partial<CaMaterial>> {
    const result: Partial<Record<Field, string>> = {};
    for (const field of PUBLISH_ORDER) {
      try {
        result[field] = await readFile(join(this.directory, FILES[field]), "utf8");
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      }
    }
    return result;
  }

  // A CA key others can read is a compromised mesh; tighten it rather than refuse to start.
  private async checkKeyMode(): Promise<void> {
    const path = join(this.directory, FILES.privateKey);
    const { mode } = await stat(path);
    if ((mode & (constants.S_IRWXG | constants.S_IRWXO)) !== 0) await chmod(path, 0o600);
  }
}
