// Kubernetes mode with real processes: the fake API server, several `osm-cert server` replicas on
// --kubeconfig, and an agent authenticating with a projected ServiceAccount token.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdir, rename, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { connectSds, decodeSecrets, SdsStream } from "../helpers/envoy-sds-client.js";
import { serviceCsrPem, tempDir } from "../helpers/pki.js";
import { CliProcess, runCli, startCli, startServerProcess } from "../helpers/processes.js";
import { statusOf, TestSigningClient } from "../helpers/signing-client.js";

const FAKE = fileURLToPath(new URL("../fakes/kube-apiserver-process.js", import.meta.url));

function csrFor(sa: string, ns: string): Promise<string> {
  return serviceCsrPem(sa, ns);
}

describe("Kubernetes mode: fake API server, server replicas, token-authenticated agent", () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let fake: CliProcess;
  let control: string;
  let kubeconfig: string;
  const replicas: { server: CliProcess; address: string }[] = [];
  let root: string;

  const post = async (path: string, body: unknown) =>
    (await fetch(`${control}${path}`, { method: "POST", body: JSON.stringify(body) })).json() as Promise<
      Record<string, unknown>
    >;
  const token = async (namespace: string, serviceAccount: string, extra: Record<string, unknown> = {}) =>
    (await post("/token", { namespace, serviceAccount, ...extra })).token as string;

  before(async () => {
    dir = await tempDir();
    kubeconfig = join(dir.path, "kubeconfig.json");
    fake = new CliProcess(
      spawn(process.execPath, [FAKE, kubeconfig, "bookstore", "bookbuyer"], {
        stdio: ["ignore", "pipe", "pipe"],
      }),
      "fake-apiserver",
    );
    control = (await fake.waitForEvent("fake.started")).control as string;
  });

  after(async () => {
    await Promise.all(replicas.map((r) => r.server.stop()));
    await fake?.stop();
    await dir.remove();
  });

  test("five replicas starting together on an empty cluster end with exactly one root, and all sign with it", async () => {
    const started = await Promise.all(
      Array.from({ length: 5 }, () =>
        startServerProcess(null, ["--kubeconfig", kubeconfig]).catch((e: Error) => e),
      ),
    );
    for (const r of started) {
      if (r instanceof Error) throw r;
      replicas.push(r);
    }
    const secrets = (await (
      await fetch(`${control}/objects?resource=secrets&namespace=osm-system`)
    ).json()) as { metadata: { name: string }; data: Record<string, string> }[];
    assert.deepEqual(
      secrets.map((s) => s.metadata.name),
      ["osm-ca-bundle"],
    );
    const data = secrets[0]?.data ?? {};
    assert.deepEqual(Object.keys(data).sort(), ["ca.crt", "expiration", "private.key"]);
    root = Buffer.from(data["ca.crt"] as string, "base64").toString("utf8");
    const rootCert = new X509Certificate(root);
    const bearer = await token("bookstore", "bookstore-v2", {
      pod: { name: "bookstore-v2-7d9", uid: "0b6f4e7c-1c0d-4a44-9d55-5c0b8c3f6a11" },
    });
    for (const replica of replicas) {
      // The client trusts only the Secret's root: a replica with any other root fails the handshake.
      const client = new TestSigningClient(replica.address, root, undefined, bearer);
      try {
        const response = await client.create(await csrFor("bookstore-v2", "bookstore"));
        const leaf = new X509Certificate(response.certificate_chain[0] as string);
        assert.ok(leaf.verify(rootCert.publicKey));
      } finally {
        client.close();
      }
    }
    const audit = replicas[0]?.server.lines.find((l) => l.event === "certificate.issued");
    assert.equal(audit?.authn, "service-account-token");
    assert.equal(audit?.pod, "bookstore-v2-7d9");
  });

  test("tokens: another SA than the CSR, wrong audience, expired, garbage", async () => {
    const address = replicas[0]?.address as string;
    const cases: [string, string, string][] = [
      ["token for bookbuyer, CSR for bookstore", await token("bookbuyer", "bookbuyer"), "PERMISSION_DENIED"],
      [
        "wrong audience",
        await token("bookstore", "bookstore-v2", { audiences: ["https://kubernetes.default.svc"] }),
        "UNAUTHENTICATED",
      ],
      ["expired", await token("bookstore", "bookstore-v2", { expiresInSeconds: -60 }), "UNAUTHENTICATED"],
      ["garbage", "not-a-token", "UNAUTHENTICATED"],
    ];
    for (const [name, bearer, expected] of cases) {
      const client = new TestSigningClient(address, root, undefined, bearer);
      try {
        const result = await statusOf(client.create(await csrFor("bookstore-v2", "bookstore")));
        assert.equal(result.status, expected, `${name}: ${result.details}`);
      } finally {
        client.close();
      }
    }
  });

  test("TokenReview API failing: UNAVAILABLE (retryable), then success once it recovers", async () => {
    const address = replicas[1]?.address as string;
    const bearer = await token("bookstore", "bookstore-v2");
    await post("/fail", { status: 503, count: 1000, match: { resource: "tokenreviews" } });
    const client = new TestSigningClient(address, root, undefined, bearer);
    try {
      const failed = await statusOf(client.create(await csrFor("bookstore-v2", "bookstore")));
      assert.equal(failed.status, "UNAVAILABLE", failed.details);
      await post("/clear", {});
      assert.equal(
        (await statusOf(client.create(await csrFor("bookstore-v2", "bookstore")))).status,
        "OK",
        "nothing negative was cached",
      );
    } finally {
      client.close();
    }
  });

  test("an agent with a projected token gets its identity and serves it over SDS", async () => {
    const tokenDir = join(dir.path, "token");
    await mkdir(join(tokenDir, "..v1"), { recursive: true });
    await writeFile(join(tokenDir, "..v1", "token"), await token("bookstore", "bookstore-v2"));
    await symlink("..v1", join(tokenDir, "..data_tmp"));
    await rename(join(tokenDir, "..data_tmp"), join(tokenDir, "..data"));
    await symlink("..data/token", join(tokenDir, "token"));
    await writeFile(join(dir.path, "root.pem"), root);
    const socket = join(dir.path, "sds.sock");
    const agent = startCli("agent", [
      "agent",
      "--server",
      replicas[2]?.address as string,
      "--ca-bundle",
      join(dir.path, "root.pem"),
      "--namespace",
      "bookstore",
      "--service-account",
      "bookstore-v2",
      "--token-file",
      join(tokenDir, "token"),
      "--sds-socket",
      socket,
      "--admin-listen",
      "127.0.0.1:0",
    ]);
    try {
      await agent.waitForEvent("certificate.rotated");
      const stream = new SdsStream(connectSds(socket));
      stream.request(["default"]);
      const response = await stream.next(0, 10_000);
      stream.end();
      assert.ok(response);
      const leaf = new X509Certificate(decodeSecrets(response)[0]?.certificateChain as string);
      assert.match(
        leaf.subjectAltName ?? "",
        /URI:spiffe:\/\/cluster\.local\/ns\/bookstore\/sa\/bookstore-v2/,
      );
    } finally {
      await agent.stop();
    }
  });
});

describe("Kubernetes mode: start-up refusals", () => {
  test("RBAC forbids creating the CA Secret: start-up fails with one line naming the verb and resource", async () => {
    const dir = await tempDir();
    const kubeconfig = join(dir.path, "kubeconfig.json");
    const fake = new CliProcess(
      spawn(process.execPath, [FAKE, kubeconfig], { stdio: ["ignore", "pipe", "pipe"] }),
      "fake-apiserver",
    );
    try {
      const control = (await fake.waitForEvent("fake.started")).control as string;
      await fetch(`${control}/deny`, {
        method: "POST",
        body: JSON.stringify({ verb: "create", resource: "secrets" }),
      });
      const result = await runCli([
        "server",
        "--kubeconfig",
        kubeconfig,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
      ]);
      assert.equal(result.code, 1);
      const lines = result.stderr.trim().split("\n");
      assert.equal(lines.length, 1, result.stderr);
      assert.match(lines[0] as string, /create/);
      assert.match(lines[0] as string, /secrets/);
      const secrets = (await (
        await fetch(`${control}/objects?resource=secrets&namespace=osm-system`)
      ).json()) as unknown[];
      assert.equal(secrets.length, 0);
    } finally {
      await fake.stop();
      await dir.remove();
    }
  });
});

describe("Kubernetes mode: trust-bundle ConfigMaps written by the elected replica", () => {
  test("the leader fills selected namespaces; when it dies, another takes the Lease after expiry and keeps them right", async () => {
    const dir = await tempDir();
    const kubeconfig = join(dir.path, "kubeconfig.json");
    const fake = new CliProcess(
      spawn(process.execPath, [FAKE, kubeconfig], { stdio: ["ignore", "pipe", "pipe"] }),
      "fake-apiserver",
    );
    const replicas: CliProcess[] = [];
    try {
      const control = (await fake.waitForEvent("fake.started")).control as string;
      const call = async (method: string, path: string, body?: unknown) =>
        (
          await fetch(`${control}${path}`, {
            method,
            ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          })
        ).json();
      const namespace = (name: string, meshed: boolean) =>
        call("POST", "/seed", {
          resource: "namespaces",
          object: {
            metadata: { name, ...(meshed ? { labels: { "openservicemesh.io/monitored-by": "osm" } } : {}) },
          },
        });
      const configMaps = async () =>
        (
          (await call("GET", "/objects?resource=configmaps")) as {
            metadata: { name: string; namespace: string };
            data: Record<string, string>;
          }[]
        ).filter((c) => c.metadata.name === "osm-ca-root-cert");
      const until = async (what: string, check: () => Promise<boolean>, timeoutMs = 20_000) => {
        const deadline = Date.now() + timeoutMs;
        while (!(await check())) {
          if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      };
      await namespace("bookstore", true);
      await namespace("unmeshed", false);
      for (let i = 0; i < 2; i++) {
        const started = await startServerProcess(null, [
          "--kubeconfig",
          kubeconfig,
          "--leader-lease-duration",
          "2s",
        ]);
        replicas.push(started.server);
      }
      await until("the bookstore ConfigMap exists", async () =>
        (await configMaps()).some((c) => c.metadata.namespace === "bookstore"),
      );
      const secret = (
        (await call("GET", "/objects?resource=secrets&namespace=osm-system")) as {
          data: Record<string, string>;
        }[]
      )[0];
      const root = Buffer.from(secret?.data["ca.crt"] as string, "base64").toString("utf8");
      const first = await configMaps();
      assert.deepEqual(
        first.map((c) => c.metadata.namespace),
        ["bookstore"],
        "nothing in unselected namespaces",
      );
      assert.equal(first[0]?.data["ca.crt"], root);

      const leaders = replicas.filter((r) => r.lines.some((l) => l.event === "leader.acquired"));
      assert.equal(leaders.length, 1, "exactly one leader");
      const leader = leaders[0] as CliProcess;
      const follower = replicas.find((r) => r !== leader) as CliProcess;
      await leader.stop("SIGKILL"); // dies without releasing the Lease
      const killedAt = Date.now();
      await namespace("bookbuyer", true);
      await follower.waitForEvent("leader.acquired", 20_000);
      assert.ok(Date.now() - killedAt >= 1_000, "the follower waited for the Lease to expire");
      await until("the new leader fills the new namespace", async () =>
        (await configMaps()).some((c) => c.metadata.namespace === "bookbuyer"),
      );
      const after = await configMaps();
      assert.deepEqual(after.map((c) => c.metadata.namespace).sort(), ["bookbuyer", "bookstore"]);
      assert.ok(after.every((c) => c.data["ca.crt"] === root));
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
      await fake.stop();
      await dir.remove();
    }
  });
});
