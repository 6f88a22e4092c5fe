// `osm-cert agent`: the only place the agent's real parts are wired together. It loads nothing the
// server needs (DESIGN.md §12: the agent's footprint is a product feature).

import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { AdminServer, parseHostPort } from "../common/admin-http.js";
import { FlagError, type ParsedFlags, parseFlags } from "../common/flags.js";
import {
  identityName,
  makeIdentity,
  parseBootstrapCommonName,
  type ServiceIdentity,
  sameIdentity,
  spiffeId,
} from "../common/identity.js";
import type { KeyAlgorithm } from "../common/keys.js";
import { waitForSignal } from "../common/lifecycle.js";
import { createLogger, type Logger } from "../common/logger.js";
import { MetricsRegistry } from "../common/metrics.js";
import { decodeCertificates } from "../common/pem.js";
import { MutableCertificateProvider } from "../common/tls-material.js";
import { AGENT_FLAGS } from "./flags.js";
import { ProjectedToken } from "./projected-token.js";
import { Rotator } from "./rotator.js";
import { SdsServer } from "./sds/sds-server.js";
import { SecretCache } from "./secret-cache.js";
import { SignerClient } from "./signer-client.js";
import { TrustBundleFollower } from "./trust-bundle-follower.js";

export type AgentFlags = ParsedFlags<typeof AGENT_FLAGS>;

export class AgentStartupError extends Error {
  readonly code = "ERR_OSM_CERT_AGENT_STARTUP";
}

export interface RunningAgent {
  readonly adminAddress: string;
  readonly cache: SecretCache;
  close(): Promise<void>;
}

function identityFromFlags(flags: AgentFlags): ServiceIdentity {
  try {
    return makeIdentity(flags["service-account"], flags.namespace);
  } catch (error) {
    throw new FlagError(`agent: ${(error as Error).message}`);
  }
}

async function readBootstrap(flags: AgentFlags, identity: ServiceIdentity) {
  if (flags["bootstrap-cert"] === undefined || flags["bootstrap-key"] === undefined) {
    throw new FlagError("agent: give --token-file, or both --bootstrap-cert and --bootstrap-key");
  }
  const [certPem, keyPem] = await Promise.all([
    readFile(flags["bootstrap-cert"], "utf8"),
    readFile(flags["bootstrap-key"], "utf8"),
  ]);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(createPrivateKey(keyPem)))
      throw new Error("the key does not match the certificate");
  } catch (error) {
    throw new AgentStartupError(
      `bootstrap certificate ${flags["bootstrap-cert"]}: ${(error as Error).message}`,
    );
  }
  const cn = /^CN=(.*)$/m.exec(cert.subject)?.[1] ?? "";
  const parsed = parseBootstrapCommonName(cn);
  if (parsed === null || !sameIdentity(parsed.identity, identity)) {
    throw new AgentStartupError(
      `bootstrap certificate CN "${cn}" does not name this pod's identity ${identityName(identity)} (<uuid>.${identity.serviceAccount}.${identity.namespace})`,
    );
  }
  return { certPem, keyPem, podUid: parsed.podUid };
}

/** The first credential: a projected ServiceAccount token, or an xDS bootstrap certificate. */
async function openCredential(flags: AgentFlags, identity: ServiceIdentity, logger: Logger) {
  const tokenFile = flags["token-file"];
  if (tokenFile !== undefined) {
    if (flags["bootstrap-cert"] !== undefined || flags["bootstrap-key"] !== undefined) {
      throw new FlagError("agent: give either --token-file or --bootstrap-cert/--bootstrap-key, not both");
    }
    const token = new ProjectedToken(tokenFile, logger);
    try {
      await token.start();
    } catch (error) {
      throw new AgentStartupError(`--token-file: ${(error as Error).message}`);
    }
    return { bootstrap: null, token, podUid: undefined };
  }
  const bootstrap = await readBootstrap(flags, identity);
  return { bootstrap, token: null, podUid: bootstrap.podUid };
}

export async function startAgent(flags: AgentFlags, logger: Logger): Promise<RunningAgent> {
  const identity = identityFromFlags(flags);
  const { bootstrap, token, podUid } = await openCredential(flags, identity, logger);
  const caBundle = await readFile(flags["ca-bundle"], "utf8");
  try {
    if (decodeCertificates(caBundle).length === 0) throw new Error("no CERTIFICATE block");
  } catch (error) {
    throw new AgentStartupError(`--ca-bundle ${flags["ca-bundle"]}: ${(error as Error).message}`);
  }

  const metrics = new MetricsRegistry();
  const cache = new SecretCache();
  cache.setTrustBundle(caBundle);
  const tls = new MutableCertificateProvider();
  tls.setCaCertificates(caBundle);
  const signer = new SignerClient({
    target: flags.server,
    tls,
    clientCertificate: bootstrap !== null,
    token: token === null ? undefined : () => token.current(),
  });
  const rotator = new Rotator({
    identity,
    trustDomain: flags["trust-domain"],
    keyAlgorithm: flags["key-algorithm"] as KeyAlgorithm,
    validityMs: flags["cert-validity"],
    rotationFraction: flags["rotation-fraction"],
    signer,
    cache,
    tls,
    bootstrap,
    logger,
    metrics,
  });
  const follower = new TrustBundleFollower({ source: signer, cache, tls, logger });
  const sds = new SdsServer({ cache, identity, logger, metrics });
  await sds.listen(flags["sds-socket"], Number.parseInt(flags["sds-socket-mode"], 8));

  const admin = new AdminServer({
    metrics,
    notReadyReason: () => (cache.validCertificate() === null ? "no valid certificate yet" : null),
    status: () => {
      const { certificate, trustBundlePem } = cache.snapshot();
      const rotation = rotator.status();
      return {
        identity: identityName(identity),
        spiffeId: spiffeId(identity, flags["trust-domain"]),
        pod: podUid ?? null,
        credential: token === null ? "bootstrap-cert" : "service-account-token",
        certificate: certificate && {
          serialNumber: certificate.serialNumber,
          notBefore: certificate.notBefore.toISOString(),
          notAfter: certificate.notAfter.toISOString(),
          valid: cache.validCertificate() !== null,
        },
        rotation,
        trustBundle: decodeCertificates(trustBundlePem ?? "").map((der) => ({
          sha256: createHash("sha256").update(der).digest("hex"),
        })),
        sdsStreams: sds.streamCount,
      };
    },
  });
  const adminBound = await admin.listen(parseHostPort(flags["admin-listen"]));
  const adminAddress = `${adminBound.host}:${adminBound.port}`;

  // Follow the bundle once the first certificate proves the server is reachable and trusted.
  let following = false;
  cache.on("change", (snapshot) => {
    if (!following && snapshot.certificate !== null) {
      following = true;
      follower.start();
    }
  });
  rotator.start();
  logger.info(
    {
      event: "agent.started",
      identity: identityName(identity),
      server: flags.server,
      sdsSocket: flags["sds-socket"],
      admin: adminAddress,
    },
    "agent started",
  );

  return {
    adminAddress,
    cache,
    async close() {
      rotator.stop();
      follower.stop();
      await sds.close();
      await admin.close();
      signer.close();
      await token?.close();
    },
  };
}

export async function agentCommand(argv: readonly string[]): Promise<void> {
  const flags = parseFlags("agent", AGENT_FLAGS, argv);
  const logger = createLogger("osm-cert-agent");
  const running = await startAgent(flags, logger);
  await waitForSignal(logger);
  await running.close();
  logger.info({ event: "agent.stopped" }, "agent stopped");
}
