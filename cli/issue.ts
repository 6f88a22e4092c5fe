// `osm-cert issue bootstrap|webhook`: the certificate kinds issued outside the CSR flow (DESIGN.md
// §3). OSM's injector makes the bootstrap cert for a pod and mounts it; this is the same operation.
// The key is made here and written next to the cert, as the pod's bootstrap Secret needs it.

import { randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "../common/files.js";
import { FlagError, type FlagTable, HelpRequested, parseFlags } from "../common/flags.js";
import { bootstrapCommonName, makeIdentity, webhookCommonName } from "../common/identity.js";
import { generateKeyPair, privateKeyToPem } from "../common/keys.js";
import { createLogger } from "../common/logger.js";
import { encodePem } from "../common/pem.js";
import { createCsr, parseCsrDer } from "../common/x509/csr.js";
import type { CertificateProfile } from "../server/providers/provider.js";
import { DirectoryCaStore } from "../server/providers/tresor/directory-store.js";
import { TresorProvider } from "../server/providers/tresor/tresor.js";

const DECADE = "87600h";

const COMMON = {
  namespace: { kind: "string", help: "namespace of the pod or webhook service", required: true },
  out: { kind: "string", help: "directory for tls.crt, tls.key and ca.crt", required: true },
  "ca-dir": {
    kind: "string",
    help: "Tresor's CA directory (created with a new root if empty)",
    default: "./osm-ca",
  },
  validity: { kind: "duration", help: "certificate validity (Go duration)", default: DECADE },
  "ca-common-name": {
    kind: "string",
    help: "CN of a root generated in an empty --ca-dir",
    default: "osm.root",
  },
} as const satisfies FlagTable;

const BOOTSTRAP_FLAGS = {
  ...COMMON,
  "service-account": { kind: "string", help: "the pod's ServiceAccount", required: true },
  "pod-uid": { kind: "string", help: "the pod's UID (default: a random UUID)" },
} as const satisfies FlagTable;

const WEBHOOK_FLAGS = {
  ...COMMON,
  service: { kind: "string", help: "the webhook's Service name", required: true },
} as const satisfies FlagTable;

const ISSUE_USAGE = `Usage: osm-cert issue <kind> [flags]

Kinds:
  bootstrap  an xDS bootstrap certificate for a pod (CN <uuid>.<sa>.<ns>, clientAuth)
  webhook    a webhook serving certificate (CN <service>.<namespace>.svc, serverAuth)

Run \`osm-cert issue <kind> --help\` for its flags.
`;

export async function issueCommand(argv: readonly string[]): Promise<void> {
  const [kind, ...rest] = argv;
  if (kind === "--help" || kind === "-h" || kind === "help") throw new HelpRequested(ISSUE_USAGE);
  if (kind === "bootstrap") {
    const flags = parseFlags("issue bootstrap", BOOTSTRAP_FLAGS, rest);
    const cn = wrap(() =>
      bootstrapCommonName(
        flags["pod-uid"] ?? randomUUID(),
        makeIdentity(flags["service-account"], flags.namespace),
      ),
    );
    await issueToDirectory({ ...flags, profile: "bootstrap", commonName: cn, dnsNames: [] });
    return;
  }
  if (kind === "webhook") {
    const flags = parseFlags("issue webhook", WEBHOOK_FLAGS, rest);
    const cn = wrap(() => webhookCommonName(flags.service, flags.namespace));
    await issueToDirectory({ ...flags, profile: "webhook", commonName: cn, dnsNames: [cn] });
    return;
  }
  throw new FlagError(
    `issue: expected "bootstrap" or "webhook", got ${kind === undefined ? "nothing" : `"${kind}"`}`,
  );
}

function wrap<T>(make: () => T): T {
  try {
    return make();
  } catch (error) {
    throw new FlagError(`issue: ${(error as Error).message}`);
  }
}

async function issueToDirectory(options: {
  out: string;
  "ca-dir": string;
  "ca-common-name": string;
  validity: number;
  profile: CertificateProfile;
  commonName: string;
  dnsNames: string[];
}): Promise<void> {
  const logger = createLogger("osm-cert-issue");
  const provider = await TresorProvider.open({
    store: new DirectoryCaStore(options["ca-dir"]),
    root: {
      keyAlgorithm: "ecdsa-p256",
      commonName: options["ca-common-name"],
      validityMs: 87_600 * 3_600_000,
    },
  });
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const csrDer = createCsr({ privateKey, commonName: options.commonName, dnsNames: options.dnsNames });
  const issued = provider.issueSync({
    csrPem: encodePem("CERTIFICATE REQUEST", csrDer),
    csr: parseCsrDer(csrDer),
    profile: options.profile,
    commonName: options.commonName,
    dnsNames: options.dnsNames,
    uris: [],
    ipAddresses: [],
    validityMs: options.validity,
  });
  await mkdir(options.out, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(options.out, "tls.key"), privateKeyToPem(privateKey), 0o600);
  await writeFileAtomic(join(options.out, "tls.crt"), issued.chainPem.join(""), 0o644);
  await writeFileAtomic(join(options.out, "ca.crt"), provider.trustBundle().roots.join(""), 0o644);
  logger.info(
    {
      event: "certificate.issued",
      kind: options.profile,
      cn: options.commonName,
      serial: issued.serialNumber,
      notAfter: issued.notAfter.toISOString(),
      provider: "tresor",
      out: options.out,
    },
    `issued ${options.profile} certificate`,
  );
}
