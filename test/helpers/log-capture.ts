// A pino logger whose JSON lines land in an array the test can read.

import { Writable } from "node:stream";
import { createLogger, type Logger } from "../../common/logger.js";

export interface CapturedLog {
  readonly logger: Logger;
  readonly lines: Record<string, unknown>[];
}

export function captureLog(component = "test"): CapturedLog {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line !== "") lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      callback();
    },
  });
  return { logger: createLogger(component, { level: "debug", destination }), lines };
}
