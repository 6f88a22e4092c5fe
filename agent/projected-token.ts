// The projected ServiceAccount token, kept fresh. The kubelet rewrites it before expiry by an
// atomic swap of the `..data` symlink in the token's directory, so the directory is watched (a
// watch on the file itself would follow the old inode) and the token re-read on any change there.
// A periodic re-read backs the watch up: a missed event must never strand the agent on a stale token.

import { readFile } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { type FSWatcher, watch } from "chokidar";
import type { Logger } from "../common/logger.js";

/** How long start-up waits for the directory watch to be set up before going on without it. */
const WATCH_READY_TIMEOUT_MS = 5_000;

export class TokenFileError extends Error {
  readonly code = "ERR_OSM_CERT_TOKEN_FILE";
}

export class ProjectedToken {
  private token = "";
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly path: string,
    private readonly logger: Logger,
    private readonly rereadMs = 60_000,
  ) {}

  /** Reads the token once (failing loudly if it is unusable) and starts following it. */
  async start(): Promise<void> {
    this.token = await this.read();
    const directory = dirname(this.path);
    this.watcher = watch(directory, { depth: 0, ignoreInitial: true, followSymlinks: false, atomic: false });
    this.watcher.on("all", (_event, changed) => {
      // Only the token and the kubelet's `..data` swap matter; other files may share the folder.
      const name = basename(changed);
      if (name === basename(this.path) || name.startsWith("..")) void this.refresh();
    });
    this.watcher.on("error", (error) =>
      this.logger.warn(
        { event: "token.watch_error", error: String(error) },
        "token watch failed; relying on periodic re-reads",
      ),
    );
    this.timer = setInterval(() => void this.refresh(), this.rereadMs);
    this.timer.unref();
    // The watch is a shortcut; the re-reads are the guarantee. A watcher that never says "ready"
    // must not hold the agent's start-up: one did, twice in full test runs (cert-manager-mode), and the
    // agent sat awaiting it, with no timer and no socket open (its only handles: stdio and the watch).
    const watcher = this.watcher;
    const ready = await new Promise<boolean>((resolve) => {
      const bound = setTimeout(() => resolve(false), WATCH_READY_TIMEOUT_MS);
      watcher.once("ready", () => {
        clearTimeout(bound);
        resolve(true);
      });
    });
    if (!ready) {
      this.logger.warn(
        { event: "token.watch_not_ready", afterMs: WATCH_READY_TIMEOUT_MS },
        "token watch not ready; relying on periodic re-reads until it is",
      );
    }
  }

  current(): string {
    return this.token;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.watcher?.close();
  }

  private async refresh(): Promise<void> {
    try {
      const next = await this.read();
      if (next !== this.token) {
        this.token = next;
        this.logger.info({ event: "token.reloaded", path: this.path }, "ServiceAccount token reloaded");
      }
    } catch (error) {
      // Mid-swap the file can be briefly missing; keep the last good token and try again later.
      this.logger.warn(
        { event: "token.read_failed", error: (error as Error).message },
        "cannot re-read the token; keeping the last one",
      );
    }
  }

  private async read(): Promise<string> {
    const text = (await readFile(this.path, "utf8")).trim();
    if (text === "" || /\s/.test(text))
      throw new TokenFileError(`token file ${this.path} is empty or malformed`);
    return text;
  }
}
