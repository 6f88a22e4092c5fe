// The fake API server as a process of its own, so integration tests can run it beside real
// `osm-cert server` replicas and agents. It writes a JSON kubeconfig for the osm-cert server's
// ServiceAccount, prints one JSON line with its addresses, and takes test commands on a small
// loopback control API (mint ServiceAccount tokens, inject faults, read objects).
//
//   node kube-apiserver-process.js KUBECONFIG_PATH [NAMESPACE ...]

import { writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import type { SignerBehaviour } from "./cert-manager.js";
import { type DenyRule, FakeKubeApiServer, type FaultMatch } from "./kube-apiserver.js";

const [kubeconfigPath, ...namespaces] = process.argv.slice(2);
if (kubeconfigPath === undefined) {
  process.stderr.write("usage: kube-apiserver-process KUBECONFIG_PATH [NAMESPACE ...]\n");
  process.exit(2);
}

const fake = await FakeKubeApiServer.start({ namespaces: ["osm-system", ...namespaces] });
const serverToken = fake.serviceAccountToken("osm-system", "osm-cert", {
  expiresAt: new Date(Date.now() + 86_400_000),
});
await writeFile(kubeconfigPath, fake.kubeconfig(serverToken));

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
      case "POST /token": {
        const token = fake.serviceAccountToken(String(input.namespace), String(input.serviceAccount), {
          audiences: (input.audiences as string[] | undefined) ?? ["osm-cert"],
          expiresAt: new Date(Date.now() + Number(input.expiresInSeconds ?? 3600) * 1000),
          ...(input.pod ? { pod: input.pod as { name: string; uid: string } } : {}),
        });
        return reply(200, { token });
      }
      case "POST /fail":
        fake.failNext(Number(input.count ?? 1), {
          status: Number(input.status ?? 503),
          match: (input.match as FaultMatch | undefined) ?? {},
          ...(input.retryAfterSeconds === undefined
            ? {}
            : { retryAfterSeconds: Number(input.retryAfterSeconds) }),
          ...(input.message === undefined ? {} : { message: String(input.message) }),
        });
        return reply(200, {});
      case "POST /latency":
        // Every request waits this long before it is answered (an overloaded or partitioned API server).
        fake.latencyMs = Number(input.ms ?? 0);
        return reply(200, {});
      case "POST /hold":
        // No answer at all until /clear: a partitioned or wedged API server.
        fake.holdRequests();
        return reply(200, {});
      case "POST /drop-watches":
        // Open watches break mid-stream, as when the API server behind a load balancer restarts.
        fake.dropWatches();
        return reply(200, {});
      case "POST /disconnect":
        fake.disconnectNext(Number(input.count ?? 1), {
          match: (input.match as FaultMatch | undefined) ?? {},
          afterWrite: input.afterWrite === true,
        });
        return reply(200, {});
      case "POST /seed":
        return reply(
          200,
          fake.seed(String(input.resource), input.object as Parameters<FakeKubeApiServer["seed"]>[1]),
        );
      case "POST /deny":
        fake.deny(input as unknown as DenyRule);
        return reply(200, {});
      case "POST /clear":
        fake.clearFaults();
        return reply(200, {});
      case "GET /objects":
        return reply(
          200,
          fake.objectsOf(
            url.searchParams.get("resource") ?? "",
            url.searchParams.get("namespace") ?? undefined,
          ),
        );
      case "GET /requests":
        return reply(200, fake.requests);
      case "POST /status":
        return reply(
          200,
          fake.writeStatus(
            String(input.resource),
            input.namespace === undefined ? undefined : String(input.namespace),
            String(input.name),
            input.status as Parameters<FakeKubeApiServer["writeStatus"]>[3],
          ),
        );
      case "POST /group":
        fake.setGroupInstalled(String(input.group), input.installed === true);
        return reply(200, {});
      case "POST /cert-manager/behave":
        fake.certManager.behave(
          input.behaviour as unknown as SignerBehaviour,
          input.commonName === undefined ? undefined : String(input.commonName),
        );
        return reply(200, {});
      case "POST /cert-manager/reset":
        fake.certManager.reset();
        return reply(200, {});
      case "GET /cert-manager/stats":
        return reply(200, fake.certManager.stats());
      case "GET /cert-manager/ca":
        return reply(200, { caPem: await fake.certManager.caPem() });
      default:
        return reply(404, { error: `no control endpoint ${req.method} ${url.pathname}` });
    }
  })().catch((error: unknown) => res.writeHead(500).end(String(error)));
});
control.listen(0, "127.0.0.1", () => {
  const { port } = control.address() as AddressInfo;
  process.stdout.write(
    `${JSON.stringify({ event: "fake.started", url: fake.url, control: `http://127.0.0.1:${port}` })}\n`,
  );
});

process.on("SIGTERM", () => {
  control.close();
  void fake.close().then(() => process.exit(0));
});
