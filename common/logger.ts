// One logger factory for both processes: pino JSON to stdout (or a given stream, in tests).
// Redaction is belt and braces; key material is never passed to a logger in the first place.

import { type DestinationStream, type Logger, pino } from "pino";

export type { Logger };

/**
 * Log lines the asynchronous stdout destination may hold while stdout is slower than the server
 * (a slow log collector): beyond this, lines are dropped (and counted by SonicBoom's 'drop')
 * instead of growing the heap without bound.
 */
const ASYNC_MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
/**
 * One write(2) carries at most this much, in whole lines (SonicBoom fills each chunk with whole
 * lines): PIPE_BUF, so lines from several processes on one pipe (--workers) never interleave.
 */
const ASYNC_MAX_WRITE_BYTES = 4096;

export function createLogger(
  component: string,
  options: {
    level?: string;
    destination?: DestinationStream;
    /**
     * Write stdout asynchronously (the signing server: one audit line per issuance must not cost a
     * blocking write(2) each). Lines are written as soon as the previous write finished (no
     * minimum batch, so a line is never held back waiting for company), bounded in memory, and
     * flushed synchronously when the process exits (pino registers that for its own destinations).
     */
    async?: boolean;
  } = {},
): Logger {
  const config = {
    name: component,
    level: options.level ?? process.env.OSM_CERT_LOG_LEVEL ?? "info",
    base: { component },
    redact: {
      paths: ["privateKey", "*.privateKey", "key", "*.key", "token", "*.token"],
      censor: "[redacted]",
    },
  };
  if (options.destination !== undefined) return pino(config, options.destination);
  if (options.async === true) {
    return pino(
      config,
      pino.destination({
        dest: 1,
        sync: false,
        minLength: 0,
        maxLength: ASYNC_MAX_BUFFERED_BYTES,
        maxWrite: ASYNC_MAX_WRITE_BYTES,
      }),
    );
  }
  return pino(config);
}
