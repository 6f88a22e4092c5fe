// The projected ServiceAccount token, kept fresh. The kubelet rewrites it before expiry by an
// atomic swap of the `..data` symlink in the token's directory, so the directory is watched (a
// watch on the file itself would follow the old inode) and the token re-read on any change there.
// A periodic re-read backs the watch up: a missed event must never strand the agent on a stale token.

import { type FSWatcher, watch } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname } from "node:path";
import type { Logger } from "../common/logger.js";

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
    // node:fs's watch on the one directory, not chokidar's: chokidar also sets up a watch per file
    // it sees in the folder, asynchronously, and a file appearing there while the agent stopped
    // (in the tests, the agents' own SDS sockets share it) could leave one made after close(): the
    // agent then never exited (cert-manager-mode timed out with both agents stopped but alive, their
    // only handles stdio and that watch). One directory watch, closed synchronously, is all this needs.
    const name = basename(this.path);
    try {
      this.watcher = watch(dirname(this.path), { persistent: false }, (_event, changed) => {
        // Only the token and the kubelet's `..data` swap matter; other files may share the folder.
        // A name-less event (the platform did not say which) is re-read too.
        if (changed === null || changed === name || changed.startsWith("..")) void this.refresh();
      });
      this.watcher.on("error", (error) => this.watchFailed(error));
    } catch (error) {
      this.watchFailed(error);
    }
    this.timer = setInterval(() => void this.refresh(), this.rereadMs);
    this.timer.unref();
  }

  private watchFailed(error: unknown): void {
    this.logger.warn(
      { event: "token.watch_error", error: String(error) },
      "token watch failed; relying on periodic re-reads",
    );
  }

  current(): string {
    return this.token;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    this.watcher?.close();
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
