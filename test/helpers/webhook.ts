// The admission webhook started in-process from its command-line flags, as the tests that send it
// AdmissionReviews over real HTTPS run it: serving from a Tresor CA directory, both listeners on
// free loopback ports.

import { parseFlags } from "../../common/flags.js";
import type { Logger } from "../../common/logger.js";
import { WEBHOOK_FLAGS } from "../../webhook/flags.js";
import { type RunningWebhook, startWebhook, type WebhookTestHooks } from "../../webhook/main.js";

export interface InProcessWebhookOptions {
  /** Default: openservicemesh/osm-cert:0.1.0. */
  readonly agentImage?: string;
  /** More flags after the ones above, e.g. `["--serving-cert-validity", "20s"]`. */
  readonly flags?: readonly string[];
  readonly hooks?: WebhookTestHooks;
}

export function startWebhookWithCaDir(
  caDir: string,
  logger: Logger,
  signal: AbortSignal,
  options: InProcessWebhookOptions = {},
): Promise<RunningWebhook> {
  const flags = parseFlags(
    "webhook",
    WEBHOOK_FLAGS,
    [
      "--ca-dir",
      caDir,
      "--listen",
      "127.0.0.1:0",
      "--admin-listen",
      "127.0.0.1:0",
      "--agent-image",
      options.agentImage ?? "openservicemesh/osm-cert:0.1.0",
      ...(options.flags ?? []),
    ],
    {},
  );
  return startWebhook(flags, logger, signal, options.hooks);
}
