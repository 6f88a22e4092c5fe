// `osm-cert agent`: the only place the agent's real parts are wired together. It loads nothing the
// server needs (DESIGN.md §12: the agent's footprint is a product feature).

import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { AdminServer, parseHostPort } from "../common/admin-http.js";
import { FlagError, type ParsedFlags, parseFlags, readFlagFile } from "../common/flags.js";
import {
  identityName,
  makeIdentity,
  parseBootstrapCommonName,
  type ServiceIdentity,
  sameIdentity,
  signingServerSpiffeId,
  spiffeId,
} from "../common/identity.js";
import type { KeyAlgorithm } from "../common/keys.js";
import { waitForSignal } from "../common/lifecycle.js";
import { createLogger, type Logger } from "../common/logger.js";
import { MetricsRegistry } from "../common/metrics.js";
import { decodeCertificates } from "../common/pem.js";
import { quote } from "../common/quote.js";
import { MutableCertificateProvider } from "../common/tls-material.js";
import { readCertificateNames } from "../common/x509/certificate-names.js";
import { AGENT_FLAGS } from "./flags.js";
import { exposedGc, ReleasedConnectionCollector } from "./native-memory.js";
import { ProjectedToken } from "./projected-token.js";
import { Rotator } from "./rotator.js";
import { SdsServer } from "./sds/sds-server.js";
import { SecretCache } from "./secret-cache.js";
import { SignerClient } from "./signer-client.js";
import { AgentTrust, checkTrustBundle } from "./trust.js";
import { TrustBundleFollower } from "./trust-bundle-follower.js";
import { applyAgentV8Tiers } from "./v8-tiers.js";

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
    readFlagFile("bootstrap-cert", flags["bootstrap-cert"]),
    readFlagFile("bootstrap-key", flags["bootstrap-key"]),
  ]);
  let cn: string | null;
  try {
    const cert = new X509Certificate(certPem);
    if (!cert.checkPrivateKey(createPrivateKey(keyPem)))
      throw new Error("the key does not match the certificate");
    cn = readCertificateNames(cert.raw).subjectCommonName;
  } catch (error) {
    throw new AgentStartupError(`--bootstrap-cert ${flags["bootstrap-cert"]}: ${(error as Error).message}`);
  }
  const parsed = cn === null ? null : parseBootstrapCommonName(cn);
  if (parsed === null || !sameIdentity(parsed.identity, identity)) {
    throw new AgentStartupError(
      `--bootstrap-cert ${flags["bootstrap-cert"]}: CN ${quote(cn ?? "")} does not name this pod's identity ${identityName(identity)} (<uuid>.${identity.serviceAccount}.${identity.namespace})`,
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
      await token.close();
      throw new AgentStartupError(`--token-file ${tokenFile}: ${(error as Error).message}`);
    }
    return { bootstrap: null, token, podUid: undefined };
  }
  const bootstrap = await readBootstrap(flags, identity);
  return { bootstrap, token: null, podUid: bootstrap.podUid };
}

export async function startAgent(flags: AgentFlags, logger: Logger): Promise<RunningAgent> {
  const identity = identityFromFlags(flags);
  // Everything that can fail on bad input is read before anything starts that would keep the
  // process alive (the token watcher, sockets), and whatever did start is stopped on failure: a
  // pod whose agent cannot start must see it exit, not hang.
  const caBundle = await readFlagFile("ca-bundle", flags["ca-bundle"]);
  try {
    checkTrustBundle(caBundle);
  } catch (error) {
    throw new AgentStartupError(`--ca-bundle ${flags["ca-bundle"]}: ${(error as Error).message}`);
  }
  const { bootstrap, token, podUid } = await openCredential(flags, identity, logger);
  const stops: (() => Promise<void> | void)[] = [];
  if (token !== null) stops.push(() => token.close());
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop();
  };
  try {
    return await startParts(flags, logger, { identity, caBundle, bootstrap, token, podUid }, stops, stopAll);
  } catch (error) {
    await stopAll();
    throw error;
  }
}

async function startParts(
  flags: AgentFlags,
  logger: Logger,
  input: {
    identity: ServiceIdentity;
    caBundle: string;
    bootstrap: Awaited<ReturnType<typeof readBootstrap>> | null;
    token: ProjectedToken | null;
    podUid: string | undefined;
  },
  stops: (() => Promise<void> | void)[],
  stopAll: () => Promise<void>,
): Promise<RunningAgent> {
  const { identity, caBundle, bootstrap, token, podUid } = input;
  const metrics = new MetricsRegistry();
  const cache = new SecretCache();
  const tls = new MutableCertificateProvider();
  const trust = new AgentTrust(cache, tls, caBundle);
  const collector = new ReleasedConnectionCollector(exposedGc());
  stops.push(() => collector.close());
  const signer = new SignerClient({
    target: flags.server,
    tls,
    clientCertificate: bootstrap !== null,
    token: token === null ? undefined : () => token.current(),
    serverSpiffeId: signingServerSpiffeId(flags["trust-domain"]),
    onChannelReleased: () => collector.connectionReleased(),
  });
  stops.push(() => signer.close());
  const rotator = new Rotator({
    identity,
    trustDomain: flags["trust-domain"],
    keyAlgorithm: flags["key-algorithm"] as KeyAlgorithm,
    validityMs: flags["cert-validity"],
    rotationFraction: flags["rotation-fraction"],
    signer,
    cache,
    trust,
    tls,
    bootstrap,
    logger,
    metrics,
  });
  stops.push(() => rotator.stop());
  const follower = new TrustBundleFollower({
    source: signer,
    trust,
    logger,
    onRenewRequest: ({ before, windowMs }) => rotator.requestRenewal(before, windowMs),
  });
  stops.push(() => follower.stop());
  // Follow the bundle once the first certificate proves the server is reachable and trusted.
  let following = false;
  cache.on("change", (snapshot) => {
    if (!following && snapshot.certificate !== null) {
      following = true;
      // On the next turn: this change's SDS push (a listener added later) goes out first.
      setImmediate(() => follower.start());
    }
  });
  // The first certificate is on the start-up's critical path (Envoy waits for it): the connection
  // to the signing server and the first key are under way before the local servers are set up,
  // which then happens while the server handshakes and signs (README, Benchmarks: figure 5).
  signer.connect();
  rotator.start();

  const sds = new SdsServer({ cache, identity, logger, metrics });
  await sds.listen(flags["sds-socket"], Number.parseInt(flags["sds-socket-mode"], 8));
  stops.push(() => sds.close());

  const admin = new AdminServer({
    metrics,
    notReadyReason: () => (cache.validCertificate() === null ? "no valid certificate yet" : null),
    stallThresholdMs: flags["liveness-stall-threshold"],
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
  stops.push(() => admin.close());
  const adminAddress = `${adminBound.host}:${adminBound.port}`;

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

  return { adminAddress, cache, close: stopAll };
}

export async function agentCommand(argv: readonly string[]): Promise<void> {
  applyAgentV8Tiers(); // no Sparkplug (agent/v8-tiers.ts)
  const flags = parseFlags("agent", AGENT_FLAGS, argv);
  const logger = createLogger("osm-cert-agent");
  const running = await startAgent(flags, logger);
  await waitForSignal(logger);
  await running.close();
  logger.info({ event: "agent.stopped" }, "agent stopped");
}
