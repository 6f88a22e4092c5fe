// The fake Vault as a process of its own, so tests (and the demo, see the README) can run it beside
// real `osm-cert server` and agent processes. It sets Vault up the way the README tells an operator
// to (PKI mount, the openservicemesh role, a bootstrap role, the osm-cert policy, a Kubernetes auth
// role), prints one JSON line with its address and a token for the server, and takes test commands
// on a small loopback control API (seal, faults, roles, policies, tokens, CA rotation).
//
//   node vault-process.js [--tls] [--intermediate] [--namespace NS]

import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { type Capability, FakeVault, type KubernetesAuthRole, type PkiRole } from "./vault.js";

const args = process.argv.slice(2);
const namespaceAt = args.indexOf("--namespace");

/** The role and policies the README's operator commands create. */
const MESH_ROLE: PkiRole = {
  allowed_domains: ["cluster.local", "osm-cert.osm-system.svc"],
  allow_subdomains: true,
  allow_bare_domains: true,
  allow_localhost: true,
  allow_ip_sans: true,
  allowed_uri_sans: ["spiffe://cluster.local/*"],
  key_type: "any",
  max_ttl: "24h",
  require_cn: true,
  use_csr_common_name: false,
  use_csr_sans: false,
  server_flag: true,
  client_flag: true,
};
const BOOTSTRAP_ROLE: PkiRole = {
  allow_any_name: true,
  enforce_hostnames: false,
  key_type: "any",
  max_ttl: "87600h",
  server_flag: false,
  client_flag: true,
  use_csr_common_name: false,
  use_csr_sans: false,
};
const SIGNER_POLICY: Record<string, Capability[]> = {
  "pki/sign/openservicemesh": ["update"],
};

const fake = await FakeVault.start({
  tls: args.includes("--tls"),
  intermediate: args.includes("--intermediate"),
  ...(namespaceAt >= 0 ? { namespace: args[namespaceAt + 1] as string } : {}),
  maxLeaseTtl: "87600h",
});
fake.writeRole("openservicemesh", MESH_ROLE);
fake.writeRole("osm-bootstrap", BOOTSTRAP_ROLE);
fake.writePolicy("osm-cert", SIGNER_POLICY);
fake.writeKubernetesRole("osm-cert", {
  boundServiceAccountNames: ["osm-cert"],
  boundServiceAccountNamespaces: ["osm-system"],
  policies: ["osm-cert"],
  ttl: "1h",
});
const serverToken = fake.createToken({ policies: ["osm-cert"], ttl: "768h", renewable: true });

async function body(req: IncomingMessage): Promise<Record<string, unknown>> {
  let text = "";
  for await (const chunk of req) text += chunk;
  return text === "" ? {} : (JSON.parse(text) as Record<string, unknown>);
}

const control = createServer((req, res) => {
  void (async () => {
    const url = new URL(req.url ?? "/", "http://control");
    const reply = (status: number, value: unknown) =>
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(value));
    const input = await body(req);
    switch (`${req.method} ${url.pathname}`) {
      case "POST /token":
        return reply(200, { token: fake.createToken(input) });
      case "POST /revoke":
        fake.revokeToken(String(input.token));
        return reply(200, {});
      case "POST /seal":
        fake.seal();
        return reply(200, {});
      case "POST /unseal":
        fake.unseal();
        return reply(200, {});
      case "POST /standby":
        fake.standbyOf = input.of === undefined ? undefined : (input.of as string | null);
        return reply(200, {});
      case "POST /fail":
        fake.failNext(Number(input.count ?? 1), Number(input.status ?? 503), String(input.pathPrefix ?? ""));
        return reply(200, {});
      case "POST /drop":
        fake.dropNext(Number(input.count ?? 1), String(input.pathPrefix ?? ""));
        return reply(200, {});
      case "POST /latency":
        fake.latencyMs = Number(input.ms ?? 0);
        return reply(200, {});
      case "POST /clear":
        fake.clearFaults();
        return reply(200, {});
      case "POST /role":
        fake.writeRole(String(input.name), input.role as PkiRole);
        return reply(200, {});
      case "POST /policy":
        fake.writePolicy(String(input.name), input.paths as Record<string, Capability[]>);
        return reply(200, {});
      case "POST /kubernetes-role":
        fake.writeKubernetesRole(String(input.name), input.role as KubernetesAuthRole);
        return reply(200, {});
      case "POST /rotate":
        await fake.rotateCa();
        return reply(200, { rootPem: fake.rootPem });
      case "GET /requests":
        return reply(200, fake.requests);
      default:
        return reply(404, { error: `no control endpoint ${req.method} ${url.pathname}` });
    }
  })().catch((error: unknown) => res.writeHead(500).end(String(error)));
});
control.listen(0, "127.0.0.1", () => {
  const { port } = control.address() as AddressInfo;
  process.stdout.write(
    `${JSON.stringify({
      event: "fake.started",
      url: fake.url,
      control: `http://127.0.0.1:${port}`,
      rootPem: fake.rootPem,
      listenerCaPem: fake.listenerCaPem,
      rootToken: fake.rootToken,
      serverToken,
    })}\n`,
  );
});

process.on("SIGTERM", () => {
  control.close();
  void fake.close().then(() => process.exit(0));
});
