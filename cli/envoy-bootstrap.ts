// `osm-cert envoy-bootstrap`: prints what Envoy needs to read its secrets from the agent (DESIGN.md
// §11, issue 6) — the SDS cluster and SdsSecretConfigs as a fragment, or with --full a whole
// bootstrap for a standalone Envoy doing mTLS in and out. Output only: nothing is written or started.

import {
  bootstrapFragment,
  type JsonObject,
  parseSocketAddress,
  standaloneBootstrap,
  validateSocketPath,
  validateSpiffeId,
} from "../agent/envoy-bootstrap.js";
import { FlagError, type FlagTable, parseFlags } from "../common/flags.js";

export const ENVOY_BOOTSTRAP_FLAGS = {
  "sds-socket": {
    kind: "string",
    help: "absolute path of the agent's SDS socket as Envoy sees it",
    required: true,
    validate: validateSocketPath,
  },
  full: {
    kind: "boolean",
    help: "a complete bootstrap for a standalone Envoy instead of the fragment",
  },
  format: { kind: "string", help: "output format", default: "yaml", choices: ["yaml", "json"] },
  "admin-port": {
    kind: "number",
    help: "--full: loopback port of Envoy's admin interface",
    default: "15000",
    validate: (v) => void parsePort(v),
  },
  listen: {
    kind: "string",
    help: "--full: HOST:PORT of the mTLS listener",
    default: "0.0.0.0:15443",
    validate: (v) => void parseSocketAddress(v),
  },
  upstream: {
    kind: "string",
    help: "--full: HOST:PORT of the mTLS upstream every request goes to",
    default: "127.0.0.1:8443",
    validate: (v) => void parseSocketAddress(v),
  },
  "peer-spiffe-id": {
    kind: "list",
    help: "--full: SPIFFE IDs a client must present (any mesh certificate when none)",
  },
  "upstream-spiffe-id": {
    kind: "string",
    help: "--full: SPIFFE ID the upstream must present (any mesh certificate when unset)",
    validate: validateSpiffeId,
  },
} as const satisfies FlagTable;

const FULL_ONLY = ["admin-port", "listen", "upstream", "peer-spiffe-id", "upstream-spiffe-id"] as const;

function parsePort(text: string): number {
  const port = Number(text);
  if (!(Number.isInteger(port) && port >= 1 && port <= 65535)) throw new Error(`"${text}" is not a port`);
  return port;
}

/** The document the command prints, from its flags. */
export function envoyBootstrapDocument(
  argv: readonly string[],
  env = process.env,
): {
  document: JsonObject;
  format: "yaml" | "json";
} {
  const flags = parseFlags("envoy-bootstrap", ENVOY_BOOTSTRAP_FLAGS, argv, env);
  const socketPath = flags["sds-socket"];
  if (!flags.full) {
    // Said rather than ignored: someone passing --listen expects a listener in the output.
    const stray = FULL_ONLY.find((name) => argv.some((a) => a === `--${name}` || a.startsWith(`--${name}=`)));
    if (stray !== undefined) throw new FlagError(`envoy-bootstrap: --${stray} applies only with --full`);
  }
  // common/flags.ts does not run `validate` on list flags: check each ID here, as a flag error.
  for (const id of flags["peer-spiffe-id"]) {
    try {
      validateSpiffeId(id);
    } catch (error) {
      throw new FlagError(`envoy-bootstrap: invalid --peer-spiffe-id: ${(error as Error).message}`);
    }
  }
  const document = flags.full
    ? standaloneBootstrap({
        socketPath,
        adminPort: flags["admin-port"],
        listen: parseSocketAddress(flags.listen),
        upstream: parseSocketAddress(flags.upstream),
        peerSpiffeIds: flags["peer-spiffe-id"],
        upstreamSpiffeId: flags["upstream-spiffe-id"],
      })
    : bootstrapFragment(socketPath);
  return { document, format: flags.format === "json" ? "json" : "yaml" };
}

export async function envoyBootstrapCommand(argv: readonly string[]): Promise<void> {
  const { document, format } = envoyBootstrapDocument(argv);
  if (format === "json") {
    process.stdout.write(`${JSON.stringify(document, null, 2)}\n`);
    return;
  }
  // Loaded only for YAML; block style, no anchors/aliases, strings quoted only where YAML needs it.
  const { stringify } = await import("yaml");
  process.stdout.write(stringify(document, { aliasDuplicateObjects: false, lineWidth: 0 }));
}
