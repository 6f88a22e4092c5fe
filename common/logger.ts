// One logger factory for both processes: pino JSON to stdout (or a given stream, in tests).
// Redaction is belt and braces; key material is never passed to a logger in the first place.

import { type DestinationStream, type Logger, pino } from "pino";

export type { Logger };

export function createLogger(
  component: string,
  options: { level?: string; destination?: DestinationStream } = {},
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
  return options.destination === undefined ? pino(config) : pino(config, options.destination);
}
