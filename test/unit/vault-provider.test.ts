// The Vault provider against the fake Vault over real HTTP: signing only through sign/<role>,
// Vault's answer validated, errors mapped with Vault's reason, the token looked up, renewed and
// replaced, the trust bundle refreshed and announced, standby redirects followed.

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { FlagError } from "../../common/flags.js";
import { generateKeyPair } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { createCsr, parseCsrDer } from "../../common/x509/csr.js";
import { KubeClient, SECRETS, StaticToken } from "../../server/kubernetes/client.js";
import { type IssueRequest, ProviderError } from "../../server/providers/provider.js";
import { VaultClient } from "../../server/providers/vault/client.js";
import {
  openVaultProvider,
  type VaultFlagValues,
  vaultSettings,
} from "../../server/providers/vault/config.js";
import { type TokenSourceConfig, VaultTokenManager } from "../../server/providers/vault/token.js";
import { VaultProvider } from "../../server/providers/vault/vault.js";
import { FakeKubeApiServer } from "../fakes/kube-apiserver.js";
import { FakeVault, fakeServiceAccountJwt, type PkiRole } from "../fakes/vault.js";
import { captureLog } from "../helpers/log-capture.js";
import { tempDir } from "../helpers/pki.js";

const ROLE: PkiRole = {
  allowed_domains: ["cluster.local"],
  allow_subdomains: true,
  allowed_uri_sans: ["spiffe://cluster.local/*"],
  key_type: "ec",
  max_ttl: "24h",
  use_csr_common_name: false,
  use_csr_sans: false,
};

async function serviceRequest(
  sa = "bookstore",
  ns = "bookstore",
  csrNames: { dns?: string[]; uris?: string[] } = {},
): Promise<IssueRequest> {
  // Async generation: reading a sync-generated key's details can deadlock Node 20 (DESIGN.md §7).
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const cn = `${sa}.${ns}.cluster.local`;
  const uri = `spiffe://cluster.local/ns/${ns}/sa/${sa}`;
  const der = createCsr({
    privateKey,
    commonName: cn,
    dnsNames: csrNames.dns ?? [cn],
    uris: csrNames.uris ?? [uri],
  });
  return {
    csrPem: encodePem("CERTIFICATE REQUEST", der),
    csr: parseCsrDer(der),
    profile: "service",
    commonName: cn,
    dnsNames: [cn],
    uris: [uri],
    ipAddresses: [],
    validityMs: 3_600_000,
  };
}

async function open(
  vault: FakeVault,
  source: TokenSourceConfig,
  extra: { attempts?: number; timeoutMs?: number; refreshIntervalMs?: number; address?: string } = {},
) {
  const log = captureLog("vault-test");
  const client = new VaultClient({
    address: extra.address ?? vault.url,
    attempts: extra.attempts ?? 3,
    baseDelayMs: 20,
    timeoutMs: extra.timeoutMs ?? 2_000,
    ...(vault.namespace ? { namespace: vault.namespace } : {}),
  });
  const tokens = new VaultTokenManager({ client, source, logger: log.logger });
  const provider = await VaultProvider.open({
    client,
    tokens,
    mount: "pki",
    role: "osm",
    logger: log.logger,
    refreshIntervalMs: extra.refreshIntervalMs ?? 60_000,
  });
  return { provider, log };
}

const staticToken = (token: string): TokenSourceConfig => ({
  kind: "static",
  token,
  describe: "--vault-token",
});

async function refusal(promise: Promise<unknown>): Promise<ProviderError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ProviderError, String(error));
    return error;
  }
  assert.fail("expected a ProviderError");
}

describe("Vault provider", () => {
  let vault: FakeVault;
  let token: string;
  let provider: VaultProvider;
  let log: ReturnType<typeof captureLog>;

  before(async () => {
    vault = await FakeVault.start();
    vault.writeRole("osm", ROLE);
    vault.writePolicy("osm-cert", { "pki/sign/osm": ["update"] });
    token = vault.createToken({ policies: ["osm-cert"], ttl: "1h" });
    ({ provider, log } = await open(vault, staticToken(token)));
  });
  after(async () => {
    await provider.close();
    await vault.close();
  });

  test("signs through sign/<role> with the server's names; chain is the leaf alone under a root CA", async () => {
    const request = await serviceRequest();
    const issued = await provider.issue(request);
    assert.equal(issued.chainPem.length, 1, "the root is never part of the chain");
    const leaf = new X509Certificate(issued.chainPem[0] as string);
    assert.equal(leaf.serialNumber.replace(/^(00)+/, ""), issued.serialNumber);
    assert.ok(leaf.verify(new X509Certificate(vault.rootPem).publicKey));
    assert.deepEqual(provider.trustBundle().roots, [vault.rootPem]);
    const sign = vault.requestsTo("pki/sign/osm").at(-1);
    assert.deepEqual(sign?.body, {
      common_name: "bookstore.bookstore.cluster.local",
      alt_names: "bookstore.bookstore.cluster.local",
      uri_sans: "spiffe://cluster.local/ns/bookstore/sa/bookstore",
      ip_sans: "",
      ttl: "3600s",
      format: "pem",
      csr: sign?.body?.csr,
    });
    assert.equal(vault.requestsTo("pki/issue").length, 0, "issue/ is never called");
  });

  test("Vault's answer must carry exactly the decided names", async () => {
    // A role that takes names from the CSR: a CSR naming more than the server decided gets a leaf
    // with the extra name, and that leaf must be refused rather than served.
    vault.writeRole("osm", { ...ROLE, use_csr_common_name: true, use_csr_sans: true });
    try {
      const request = await serviceRequest("a", "b", { dns: ["a.b.cluster.local", "extra.b.cluster.local"] });
      const e = await refusal(provider.issue(request));
      assert.equal(e.reason, "internal");
      assert.match(e.message, /SANs .* differ from the requested ones/);
      assert.ok(log.lines.some((l) => l.event === "vault.bad_answer"));
    } finally {
      vault.writeRole("osm", ROLE);
    }
  });

  test("error rows: 403 denied naming the path, 400 precondition with Vault's text, 5xx/503/429 unavailable after bounded retries", async () => {
    vault.writePolicy("osm-cert", {});
    try {
      const e = await refusal(provider.issue(await serviceRequest()));
      assert.equal(e.reason, "denied");
      assert.match(e.message, /permission denied.*"update" on pki\/sign\/osm/);
    } finally {
      vault.writePolicy("osm-cert", { "pki/sign/osm": ["update"] });
    }

    vault.writeRole("osm", { ...ROLE, allowed_domains: ["example.com"] });
    try {
      const e = await refusal(provider.issue(await serviceRequest()));
      assert.equal(e.reason, "precondition");
      assert.match(e.message, /common name bookstore\.bookstore\.cluster\.local not allowed by this role/);
      const logged = log.lines.find((l) => l.event === "vault.refused" && l.status === 400);
      assert.deepEqual(logged?.errors, [
        "common name bookstore.bookstore.cluster.local not allowed by this role",
      ]);
    } finally {
      vault.writeRole("osm", ROLE);
    }

    for (const status of [500, 502, 503, 429]) {
      const before = vault.requestsTo("pki/sign/osm").length;
      vault.failNext(3, status, "pki/sign");
      const e = await refusal(provider.issue(await serviceRequest()));
      assert.equal(e.reason, "unavailable", `HTTP ${status}`);
      assert.equal(vault.requestsTo("pki/sign/osm").length - before, 3, "three attempts, then give up");
      vault.clearFaults();
    }

    vault.seal();
    try {
      const e = await refusal(provider.issue(await serviceRequest()));
      assert.equal(e.reason, "unavailable");
      assert.match(e.message, /Vault is sealed/);
    } finally {
      vault.unseal();
    }

    // One transient failure and one dropped connection are absorbed by the retries.
    vault.failNext(1, 502, "pki/sign");
    vault.dropNext(1, "pki/sign");
    await provider.issue(await serviceRequest());
    vault.clearFaults();
  });

  test("a slow Vault hits the deadline, never a hang", async () => {
    const slow = await open(vault, staticToken(token), { attempts: 2, timeoutMs: 300 });
    try {
      vault.latencyMs = 2_000;
      const started = Date.now();
      const e = await refusal(slow.provider.issue(await serviceRequest()));
      const took = Date.now() - started;
      assert.equal(e.reason, "unavailable");
      assert.match(e.message, /no answer within 300 ms/);
      assert.ok(took < 1_500, `gave up after ${took} ms`);
    } finally {
      vault.clearFaults();
      await slow.provider.close();
    }
  });

  test("trust bundle: a rotated CA is found by the refresh, announced, and the old root kept for its leaves", async () => {
    const own = await open(vault, staticToken(token), { refreshIntervalMs: 100 });
    try {
      const oldRoot = vault.rootPem;
      const seen: string[][] = [];
      own.provider.onTrustBundleChange((bundle) => seen.push([...bundle.roots]));
      await vault.rotateCa();
      const deadline = Date.now() + 5_000;
      while (seen.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.equal(seen.length, 1);
      assert.deepEqual(seen[0], [vault.rootPem, oldRoot]);
      const issued = await own.provider.issue(await serviceRequest());
      assert.ok(
        new X509Certificate(issued.chainPem[0] as string).verify(
          new X509Certificate(vault.rootPem).publicKey,
        ),
      );
    } finally {
      await own.provider.close();
    }
  });
});

describe("Vault provider: token lifecycle and start-up", () => {
  test("start-up says why a token cannot be used: invalid, or lacking update on the sign path", async () => {
    const vault = await FakeVault.start();
    try {
      vault.writeRole("osm", ROLE);
      await assert.rejects(
        open(vault, staticToken("hvs.invalid")),
        /lookup-self \(permission denied\): it is invalid, expired or revoked/,
      );
      const weak = vault.createToken({ policies: [], ttl: "1h" });
      await assert.rejects(
        open(vault, staticToken(weak)),
        /lacks "update" on pki\/sign\/osm \(capabilities: deny\)/,
      );
      vault.seal();
      await assert.rejects(
        open(vault, staticToken(vault.rootToken), { attempts: 1 }),
        /HTTP 503: Vault is sealed/,
      );
    } finally {
      await vault.close();
    }
  });

  test("a renewable token is renewed before its TTL ends and keeps signing", async () => {
    const vault = await FakeVault.start();
    vault.writeRole("osm", ROLE);
    vault.writePolicy("osm-cert", { "pki/sign/osm": ["update"] });
    const token = vault.createToken({ policies: ["osm-cert"], ttl: "2s", renewable: true });
    const { provider } = await open(vault, staticToken(token));
    try {
      await new Promise((r) => setTimeout(r, 3_000));
      assert.ok(vault.requestsTo("auth/token/renew-self").length >= 1);
      await provider.issue(await serviceRequest());
    } finally {
      await provider.close();
      await vault.close();
    }
  });

  test("kubernetes auth: login with the projected token, a new login when the token cannot be renewed further", async () => {
    const vault = await FakeVault.start({ namespace: "mesh" });
    const dir = await tempDir();
    try {
      vault.writeRole("osm", ROLE);
      vault.writePolicy("osm-cert", { "pki/sign/osm": ["update"] });
      vault.writeKubernetesRole("osm-cert", {
        boundServiceAccountNames: ["osm-cert"],
        boundServiceAccountNamespaces: ["osm-system"],
        policies: ["osm-cert"],
        ttl: "2s",
        maxTtl: "3s",
      });
      const jwtFile = join(dir.path, "token");
      await writeFile(jwtFile, fakeServiceAccountJwt("osm-system", "osm-cert"));
      const { provider } = await open(vault, {
        kind: "kubernetes",
        authMount: "kubernetes",
        role: "osm-cert",
        jwtFile,
      });
      try {
        await provider.issue(await serviceRequest());
        await new Promise((r) => setTimeout(r, 4_500));
        assert.ok(vault.requestsTo("auth/kubernetes/login").length >= 2, "logged in again");
        assert.ok(
          vault.requests.every((r) => r.namespace === "mesh"),
          "X-Vault-Namespace on every call",
        );
        await provider.issue(await serviceRequest());
      } finally {
        await provider.close();
      }
      await writeFile(jwtFile, fakeServiceAccountJwt("default", "intruder"));
      await assert.rejects(
        open(vault, { kind: "kubernetes", authMount: "kubernetes", role: "osm-cert", jwtFile }),
        /Kubernetes auth login refused \(auth\/kubernetes\/login, role "osm-cert"\): service account name not authorized/,
      );
    } finally {
      await vault.close();
      await dir.remove();
    }
  });

  test("Vault gone after start-up: UNAVAILABLE naming the connection error, after the bounded retries", async () => {
    const vault = await FakeVault.start();
    vault.writeRole("osm", ROLE);
    const { provider } = await open(vault, staticToken(vault.rootToken));
    try {
      await vault.close();
      const started = Date.now();
      const e = await refusal(provider.issue(await serviceRequest()));
      assert.equal(e.reason, "unavailable");
      assert.match(e.message, /Vault is unreachable: .*ECONNREFUSED/);
      assert.ok(Date.now() - started < 3_000);
      assert.deepEqual(provider.trustBundle().roots, [vault.rootPem], "the bundle is kept");
    } finally {
      await provider.close();
    }
  });

  test("an expired static token is refused with PERMISSION_DENIED's reason", async () => {
    const vault = await FakeVault.start();
    vault.writeRole("osm", ROLE);
    vault.writePolicy("osm-cert", { "pki/sign/osm": ["update"] });
    const token = vault.createToken({ policies: ["osm-cert"], ttl: "1h" });
    const { provider } = await open(vault, staticToken(token));
    try {
      vault.revokeToken(token);
      const e = await refusal(provider.issue(await serviceRequest()));
      assert.equal(e.reason, "denied");
    } finally {
      await provider.close();
      await vault.close();
    }
  });

  test("an intermediate CA: the chain is leaf + intermediate, the bundle is the root only", async () => {
    const vault = await FakeVault.start({ intermediate: true });
    vault.writeRole("osm", ROLE);
    const { provider } = await open(vault, staticToken(vault.rootToken));
    try {
      const issued = await provider.issue(await serviceRequest());
      assert.equal(issued.chainPem.length, 2);
      assert.equal(
        new X509Certificate(issued.chainPem[1] as string).fingerprint256,
        new X509Certificate(vault.issuerPem).fingerprint256,
      );
      assert.deepEqual(provider.trustBundle().roots, [vault.rootPem]);
      assert.notEqual(vault.issuerPem, vault.rootPem);
    } finally {
      await provider.close();
      await vault.close();
    }
  });

  test("a standby's 307 is followed once to the active node", async () => {
    const active = await FakeVault.start();
    const standby = await FakeVault.start();
    try {
      active.writeRole("osm", ROLE);
      standby.standbyOf = active.url;
      const { provider } = await open(active, staticToken(active.rootToken), { address: standby.url });
      try {
        await provider.issue(await serviceRequest());
        assert.ok(standby.requestsTo("pki/sign/osm").every((r) => r.status === 307));
        assert.equal(active.requestsTo("pki/sign/osm").at(-1)?.status, 200);
      } finally {
        await provider.close();
      }
    } finally {
      await active.close();
      await standby.close();
    }
  });
});

describe("Vault provider: token Secret, HTTPS", () => {
  const flagsFor = (vault: FakeVault, extra: Partial<VaultFlagValues>): VaultFlagValues => ({
    "vault-protocol": "http",
    "vault-host": undefined,
    "vault-port": undefined,
    "vault-addr": vault.url,
    "vault-role": "osm",
    "vault-pki-mount": "pki",
    "vault-namespace": undefined,
    "vault-ca-file": undefined,
    "vault-auth": "token",
    "vault-token": undefined,
    "vault-token-secret-name": undefined,
    "vault-token-secret-key": undefined,
    "vault-auth-role": undefined,
    "vault-auth-mount": "kubernetes",
    "vault-auth-token-file": "/nonexistent",
    "vault-timeout": 2_000,
    "vault-trust-bundle-refresh": 60_000,
    "osm-namespace": "osm-system",
    "ca-bundle-secret-name": "osm-ca-bundle",
    ...extra,
  });

  test("the token Secret is followed (poll, and at once after a 403); the CA bundle Secret holds ca.crt only", async () => {
    const vault = await FakeVault.start();
    const kube = await FakeKubeApiServer.start({ namespaces: ["osm-system"] });
    const client = new KubeClient({
      config: {
        server: kube.url,
        caPem: kube.caPem,
        token: new StaticToken(kube.serviceAccountToken("osm-system", "osm-cert"), "test"),
        namespace: "osm-system",
        source: "test",
      },
    });
    const log = captureLog("vault-secret");
    try {
      vault.writeRole("osm", ROLE);
      vault.writePolicy("osm-cert", { "pki/sign/osm": ["update"] });
      const first = vault.createToken({ policies: ["osm-cert"], ttl: "1h" });
      const setToken = async (token: string) => {
        const secret = await client.get(SECRETS, "vault-token", { namespace: "osm-system" });
        await client.update(SECRETS, { ...secret, data: { token: Buffer.from(token).toString("base64") } });
      };
      kube.seed("secrets", {
        metadata: { name: "vault-token", namespace: "osm-system" },
        data: { token: Buffer.from(first).toString("base64") },
      });
      const flags = flagsFor(vault, {
        "vault-token-secret-name": "vault-token",
        "vault-token-secret-key": "token",
      });
      const second = vault.createToken({ policies: ["osm-cert"], ttl: "1h" });
      const provider = await openVaultProvider(flags, log.logger, client, { secretPollMs: 200 });
      try {
        await provider.issue(await serviceRequest());
        // Rotated by the operator: the poll finds it.
        await setToken(second);
        const deadline = Date.now() + 5_000;
        while (!log.lines.some((l) => l.event === "vault.token.replaced") && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
        }
        vault.revokeToken(first);
        await provider.issue(await serviceRequest());

        // The CA bundle Secret: ca.crt only, equal to the trust bundle, following a CA rotation.
        const caOf = async () => {
          const secret = await client.get(SECRETS, "osm-ca-bundle", { namespace: "osm-system" });
          assert.deepEqual(Object.keys(secret.data ?? {}), ["ca.crt"]);
          return Buffer.from(secret.data?.["ca.crt"] ?? "", "base64").toString("utf8");
        };
        assert.equal(await caOf(), vault.rootPem);
        const oldRoot = vault.rootPem;
        await vault.rotateCa();
        await provider.refreshBundle();
        const until = Date.now() + 5_000;
        while ((await caOf()) === oldRoot && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
        assert.equal(await caOf(), `${vault.rootPem}${oldRoot}`);
      } finally {
        await provider.close();
      }
      // Rotated and the old one revoked long before the next poll: the 403 makes the server re-read at once.
      const slow = await openVaultProvider(flags, log.logger, client);
      try {
        const third = vault.createToken({ policies: ["osm-cert"], ttl: "1h" });
        await setToken(third);
        vault.revokeToken(second);
        const before = vault.requestsTo("pki/sign/osm").length;
        await slow.issue(await serviceRequest());
        assert.deepEqual(
          vault
            .requestsTo("pki/sign/osm")
            .slice(before)
            .map((r) => r.status),
          [403, 200],
        );
        assert.ok(!JSON.stringify(log.lines).includes(third), "the token is never logged");
      } finally {
        await slow.close();
      }
      // A Secret still holding Tresor's key is left alone, and said so.
      kube.seed("secrets", {
        metadata: { name: "old-tresor", namespace: "osm-system" },
        data: { "ca.crt": "eA==", "private.key": "eQ==", expiration: "eg==" },
      });
      const keeps = await openVaultProvider(
        { ...flags, "ca-bundle-secret-name": "old-tresor" },
        log.logger,
        client,
      );
      await keeps.close();
      const old = await client.get(SECRETS, "old-tresor", { namespace: "osm-system" });
      assert.deepEqual(old.data, { "ca.crt": "eA==", "private.key": "eQ==", expiration: "eg==" });
      assert.ok(log.lines.some((l) => l.event === "vault.ca_bundle_secret.holds_key"));

      await assert.rejects(
        openVaultProvider({ ...flags, "vault-token-secret-key": "missing" }, log.logger, client),
        /Secret osm-system\/vault-token key missing: the key is missing/,
      );
      await assert.rejects(
        openVaultProvider(flags, log.logger, null),
        /--vault-token-secret-name needs the Kubernetes API/,
      );
    } finally {
      await client.close();
      await kube.close();
      await vault.close();
    }
  });

  test("https: Vault's listener verified with --vault-ca-file; without it start-up fails on TLS", async () => {
    const vault = await FakeVault.start({ tls: true });
    const dir = await tempDir();
    const log = captureLog("vault-tls");
    try {
      vault.writeRole("osm", ROLE);
      const caFile = join(dir.path, "vault-ca.pem");
      await writeFile(caFile, vault.listenerCaPem as string);
      const flags = flagsFor(vault, { "vault-token": vault.rootToken, "vault-ca-file": caFile });
      const provider = await openVaultProvider(flags, log.logger, null);
      try {
        await provider.issue(await serviceRequest());
      } finally {
        await provider.close();
      }
      await assert.rejects(
        openVaultProvider({ ...flags, "vault-ca-file": undefined }, log.logger, null),
        /lookup-self: .*(self[- ]signed|unable to verify|UNABLE_TO|SELF_SIGNED)/i,
      );
      await assert.rejects(
        openVaultProvider({ ...flags, "vault-ca-file": join(dir.path, "nope.pem") }, log.logger, null),
        /--vault-ca-file .*nope\.pem: ENOENT/,
      );
    } finally {
      await vault.close();
      await dir.remove();
    }
  });
});

describe("Vault flags", () => {
  const base: VaultFlagValues = {
    "vault-protocol": "http",
    "vault-host": undefined,
    "vault-port": undefined,
    "vault-addr": undefined,
    "vault-role": "openservicemesh",
    "vault-pki-mount": "pki",
    "vault-namespace": undefined,
    "vault-ca-file": undefined,
    "vault-auth": "token",
    "vault-token": "t",
    "vault-token-secret-name": undefined,
    "vault-token-secret-key": undefined,
    "vault-auth-role": undefined,
    "vault-auth-mount": "kubernetes",
    "vault-auth-token-file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
    "vault-timeout": 5_000,
    "vault-trust-bundle-refresh": 60_000,
    "osm-namespace": "osm-system",
    "ca-bundle-secret-name": "osm-ca-bundle",
  };

  test("OSM's defaults; VAULT_ADDR as an alternative", () => {
    assert.equal(vaultSettings(base).address, "http://vault.default.svc.cluster.local:8200");
    assert.equal(
      vaultSettings({ ...base, "vault-protocol": "https", "vault-host": "10.0.0.9", "vault-port": 8300 })
        .address,
      "https://10.0.0.9:8300",
    );
    assert.equal(
      vaultSettings({ ...base, "vault-addr": "https://vault.example:8200/" }).address,
      "https://vault.example:8200",
    );
  });

  test("bad combinations: one line naming the flag", () => {
    const cases: [Partial<VaultFlagValues>, RegExp][] = [
      [{ "vault-token": undefined }, /needs a token: --vault-token/],
      [
        { "vault-token-secret-name": "s", "vault-token-secret-key": "k" },
        /--vault-token \(VAULT_TOKEN\) and --vault-token-secret-name are alternatives/,
      ],
      [
        { "vault-token": undefined, "vault-token-secret-name": "s" },
        /--vault-token-secret-name needs --vault-token-secret-key/,
      ],
      [
        { "vault-auth": "kubernetes", "vault-token": undefined },
        /--vault-auth kubernetes needs --vault-auth-role/,
      ],
      [
        { "vault-auth": "kubernetes", "vault-auth-role": "r" },
        /--vault-token \(VAULT_TOKEN\) cannot be combined with --vault-auth kubernetes/,
      ],
      [
        { "vault-addr": "http://v:8200", "vault-host": "h" },
        /--vault-addr \(VAULT_ADDR\) and --vault-host\/--vault-port are alternatives/,
      ],
      [{ "vault-addr": "ftp://v" }, /invalid --vault-addr/],
      [{ "vault-port": 70_000 }, /invalid --vault-port/],
      [{ "vault-ca-file": "/ca.pem" }, /--vault-ca-file needs https/],
      [{ "vault-role": "a/b" }, /invalid --vault-role/],
      [{ "vault-pki-mount": "pki mount" }, /invalid --vault-pki-mount/],
    ];
    for (const [change, pattern] of cases) {
      assert.throws(
        () => vaultSettings({ ...base, ...change }),
        (e: unknown) => e instanceof FlagError && pattern.test(e.message) && !e.message.includes("\n"),
        JSON.stringify(change),
      );
    }
  });
});
