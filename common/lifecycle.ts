// Process lifecycle shared by both long-running commands.

import type { Logger } from "./logger.js";

/** Resolves on the first SIGTERM or SIGINT, so the caller can shut down cleanly. */
export function waitForSignal(logger: Logger): Promise<void> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      logger.info({ signal }, "shutting down");
      process.off("SIGTERM", stop).off("SIGINT", stop);
      resolve();
    };
    process.on("SIGTERM", stop).on("SIGINT", stop);
  });
}

/** Full-jitter exponential backoff: a random delay in [ceiling/2, ceiling], ceiling doubling to a cap. */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}
