// The fake Vault over real HTTP: the behaviour tests of the Vault provider rely on, pinned to what
// Vault's API documentation says (paths, headers, status codes, error bodies, role enforcement).

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { generateKeyPair, type KeyAlgorithm } from "../../common/keys.js";
import { encodePem } from "../../common/pem.js";
import { createCsr } from "../../common/x509/csr.js";
import { FakeVault, fakeServiceAccountJwt, glob } from "../fakes/vault.js";

interface Reply {
  status: number;
  body: Record<string, unknown>;
  text: string;
  headers: Headers;
}

async function call(
  vault: FakeVault,
  method: string,
  path: string,
  options: { token?: string; bearer?: string; namespace?: string; body?: unknown } = {},
): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (options.token) headers["x-vault-token"] = options.token;
  if (options.bearer) headers.authorization = `Bearer ${options.bearer}`;
  if (options.namespace) headers["x-vault-namespace"] = options.namespace;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${vault.url}/v1/${path}`, {
    method,
    headers,
    redirect: "manual",
    ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
  });
  const text = await res.text();
  let body: Record<string, unknown> = {};
  try {
    body = text === "" ? {} : (JSON.parse(text) as Record<string, unknown>);
  } catch {
    body = {};
  }
  return { status: res.status, body, text, headers: res.headers };
}

async function csrFor(
  names: { cn: string; dns?: string[]; uris?: string[] },
  alg: KeyAlgorithm = "ecdsa-p256",
): Promise<{ pem: string; spki: Buffer }> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  const der = createCsr({
    privateKey,
    commonName: names.cn,
    dnsNames: names.dns ?? [],
    uris: names.uris ?? [],
  });
  return {
    pem: encodePem("CERTIFICATE REQUEST", der),
    spki: publicKey.export({ type: "spki", format: "der" }),
  };
}

const MESH_ROLE = {
  allowed_domains: ["cluster.local"],
  allow_subdomains: true,
  allowed_uri_sans: ["spiffe://cluster.local/*"],
  key_type: "ec" as const,
  key_bits: 256,
  max_ttl: "24h",
  use_csr_common_name: false,
  use_csr_sans: false,
};

describe("fake Vault", () => {
  let vault: FakeVault;
  let signer: string;

  before(async () => {
    vault = await FakeVault.start();
    vault.writeRole("osm", MESH_ROLE);
    vault.writePolicy("osm-signer", { "pki/sign/osm": ["update"], "pki/cert/ca_chain": ["read"] });
    signer = vault.createToken({ policies: ["osm-signer"], ttl: "1h" });
  });
  after(async () => {
    await vault.close();
  });

  test("sign/<role>: the server's names, the CSR's key, a chain to the mount's root", async () => {
    const csr = await csrFor({ cn: "ignored.cluster.local" });
    const res = await call(vault, "POST", "pki/sign/osm", {
      token: signer,
      body: {
        csr: csr.pem,
        common_name: "bookstore.bookstore.cluster.local",
        alt_names: "bookstore.bookstore.cluster.local",
        uri_sans: "spiffe://cluster.local/ns/bookstore/sa/bookstore",
        ttl: "1h",
      },
    });
    assert.equal(res.status, 200, res.text);
    const data = res.body.data as Record<string, unknown>;
    const leaf = new X509Certificate(data.certificate as string);
    assert.equal(leaf.subject, "CN=bookstore.bookstore.cluster.local");
    assert.equal(
      leaf.subjectAltName,
      "DNS:bookstore.bookstore.cluster.local, URI:spiffe://cluster.local/ns/bookstore/sa/bookstore",
    );
    assert.ok(leaf.publicKey.export({ type: "spki", format: "der" }).equals(csr.spki));
    const issuing = new X509Certificate(data.issuing_ca as string);
    assert.ok(leaf.verify(issuing.publicKey) && leaf.checkIssued(issuing));
    assert.deepEqual(
      (data.ca_chain as string[]).map((p) => new X509Certificate(p).fingerprint256),
      [new X509Certificate(vault.rootPem).fingerprint256],
    );
    assert.match(data.serial_number as string, /^[0-9a-f]{2}(:[0-9a-f]{2})+$/);
    assert.equal(data.serial_number, leaf.serialNumber.toLowerCase().match(/../g)?.join(":"));
    assert.equal(data.expiration, Date.parse(leaf.validTo) / 1000);
    const lifetime = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
    assert.ok(Math.abs(lifetime - 3_630_000) < 2_000, `1h + 30s not_before_duration, got ${lifetime}`);
    assert.equal(res.body.warnings, null);
    // The recorded request keeps what was asked for, never the token.
    const recorded = vault.requestsTo("pki/sign/osm").at(-1);
    assert.equal(recorded?.body?.common_name, "bookstore.bookstore.cluster.local");
    assert.ok(!JSON.stringify(vault.requests).includes(signer));
  });

  test("Authorization: Bearer works like X-Vault-Token; none → 403 missing client token; bad → 403 permission denied", async () => {
    const body = { csr: (await csrFor({ cn: "a" })).pem, common_name: "a.b.cluster.local" };
    assert.equal((await call(vault, "POST", "pki/sign/osm", { bearer: signer, body })).status, 200);
    const none = await call(vault, "POST", "pki/sign/osm", { body });
    assert.deepEqual([none.status, none.body], [403, { errors: ["missing client token"] }]);
    const bad = await call(vault, "POST", "pki/sign/osm", { token: "hvs.nope", body });
    assert.deepEqual([bad.status, bad.body], [403, { errors: ["permission denied"] }]);
  });

  test("policies: no update on the sign path → 403; capabilities-self tells which", async () => {
    const reader = vault.createToken({ policies: [], ttl: "1h" });
    const res = await call(vault, "POST", "pki/sign/osm", {
      token: reader,
      body: { csr: (await csrFor({ cn: "a" })).pem, common_name: "a.b.cluster.local" },
    });
    assert.deepEqual([res.status, res.body], [403, { errors: ["permission denied"] }]);
    for (const [token, expected] of [
      [reader, ["deny"]],
      [signer, ["update"]],
      [vault.rootToken, ["root"]],
    ] as const) {
      const caps = await call(vault, "POST", "sys/capabilities-self", {
        token,
        body: { paths: ["pki/sign/osm"] },
      });
      assert.equal(caps.status, 200);
      assert.deepEqual(caps.body["pki/sign/osm"], expected);
      assert.deepEqual((caps.body.data as Record<string, unknown>)["pki/sign/osm"], expected);
    }
    // issue/ needs its own grant: the signer's policy does not cover it.
    const issue = await call(vault, "POST", "pki/issue/osm", {
      token: signer,
      body: { common_name: "a.cluster.local" },
    });
    assert.equal(issue.status, 403);
  });

  test("role constraints: Vault's own 400 texts", async () => {
    const cases: [Record<string, unknown>, string, KeyAlgorithm?][] = [
      [{ common_name: "evil.example.com" }, "common name evil.example.com not allowed by this role"],
      [
        { common_name: "a.b.cluster.local", alt_names: "x.example.com" },
        "subject alternate name x.example.com not allowed by this role",
      ],
      [
        { common_name: "a.b.cluster.local", uri_sans: "spiffe://other.domain/ns/a/sa/b" },
        "URI Subject Alternative Names were provided via the API which are not valid for this role",
      ],
      [{ common_name: "a.b.cluster.local" }, "role requires keys of type ec", "rsa-2048"],
      [
        {},
        'the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false',
      ],
    ];
    for (const [params, message, alg] of cases) {
      const res = await call(vault, "POST", "pki/sign/osm", {
        token: signer,
        body: { csr: (await csrFor({ cn: "x" }, alg)).pem, ...params },
      });
      assert.deepEqual([res.status, res.body], [400, { errors: [message] }], message);
    }
    const unknown = await call(vault, "POST", "pki/sign/nope", {
      token: vault.rootToken,
      body: { csr: (await csrFor({ cn: "x" })).pem },
    });
    assert.deepEqual([unknown.status, unknown.body], [400, { errors: ["unknown role: nope"] }]);
  });

  test("role: ip_sans only with allow_ip_sans; P-384 against key_bits 384; bare domains; globs", async () => {
    vault.writeRole("strict", {
      ...MESH_ROLE,
      allow_ip_sans: false,
      key_bits: 384,
      allow_bare_domains: true,
    });
    const p256 = await call(vault, "POST", "pki/sign/strict", {
      token: vault.rootToken,
      body: { csr: (await csrFor({ cn: "x" })).pem, common_name: "cluster.local" },
    });
    assert.deepEqual(p256.body, {
      errors: ["role requires a minimum of a 384-bit key, but CSR's key is 256 bits"],
    });
    const ip = await call(vault, "POST", "pki/sign/strict", {
      token: vault.rootToken,
      body: {
        csr: (await csrFor({ cn: "x" }, "ecdsa-p384")).pem,
        common_name: "cluster.local",
        ip_sans: "10.0.0.1",
      },
    });
    assert.deepEqual(ip.body, {
      errors: ["IP Subject Alternative Names are not allowed in this role, but was provided [10.0.0.1]"],
    });
    const bare = await call(vault, "POST", "pki/sign/strict", {
      token: vault.rootToken,
      body: { csr: (await csrFor({ cn: "x" }, "ecdsa-p384")).pem, common_name: "cluster.local" },
    });
    assert.equal(bare.status, 200, bare.text);
    assert.equal(glob("spiffe://cluster.local/*", "spiffe://cluster.local/ns/a/sa/b"), true);
    assert.equal(glob("spiffe://cluster.local/*", "spiffe://cluster.localx/ns"), false);
    assert.equal(glob("a*b*c", "aXbYc"), true);
    assert.equal(glob("a*b*c", "aXcYb"), false);
  });

  test("use_csr_sans (the default for sign/): names come from the CSR and are still checked", async () => {
    vault.writeRole("csr-names", { ...MESH_ROLE, use_csr_common_name: true, use_csr_sans: true });
    const csr = await csrFor({ cn: "x.y.cluster.local", uris: ["spiffe://cluster.local/ns/y/sa/x"] });
    const res = await call(vault, "POST", "pki/sign/csr-names", {
      token: vault.rootToken,
      body: {
        csr: csr.pem,
        common_name: "other.cluster.local",
        uri_sans: "spiffe://cluster.local/ns/o/sa/o",
      },
    });
    assert.equal(res.status, 200, res.text);
    const leaf = new X509Certificate((res.body.data as { certificate: string }).certificate);
    assert.equal(leaf.subject, "CN=x.y.cluster.local");
    assert.equal(leaf.subjectAltName, "DNS:x.y.cluster.local, URI:spiffe://cluster.local/ns/y/sa/x");
  });

  test("ttl above max_ttl is clamped with Vault's warning, not refused", async () => {
    const res = await call(vault, "POST", "pki/sign/osm", {
      token: signer,
      body: { csr: (await csrFor({ cn: "x" })).pem, common_name: "a.b.cluster.local", ttl: "48h" },
    });
    assert.equal(res.status, 200);
    assert.deepEqual(res.body.warnings, [
      'TTL "48h0m0s" is longer than permitted maxTTL "24h0m0s", so maxTTL is being used',
    ]);
    const leaf = new X509Certificate((res.body.data as { certificate: string }).certificate);
    assert.ok(Math.abs(Date.parse(leaf.validTo) - Date.now() - 86_400_000) < 5_000);
  });

  test("CA endpoints need no token: ca_chain (PEM), cert/ca_chain (JSON), ca/pem", async () => {
    const chain = await call(vault, "GET", "pki/ca_chain");
    assert.equal(chain.status, 200);
    assert.equal(
      new X509Certificate(chain.text).fingerprint256,
      new X509Certificate(vault.rootPem).fingerprint256,
    );
    const json = await call(vault, "GET", "pki/cert/ca_chain");
    assert.equal((json.body.data as { certificate: string }).certificate, chain.text);
    const pem = await call(vault, "GET", "pki/ca/pem");
    assert.equal(pem.text, vault.issuerPem);
  });

  test("tokens: lookup-self, renew-self, not renewable, expiry", async () => {
    const token = vault.createToken({ policies: ["osm-signer"], ttl: "2s", explicitMaxTtl: "1h" });
    const look = await call(vault, "GET", "auth/token/lookup-self", { token });
    assert.equal(look.status, 200);
    const data = look.body.data as Record<string, unknown>;
    assert.deepEqual(data.policies, ["default", "osm-signer"]);
    assert.equal(data.renewable, true);
    assert.ok((data.ttl as number) <= 2 && (data.ttl as number) >= 1);
    const renewed = await call(vault, "POST", "auth/token/renew-self", {
      token,
      body: { increment: "600s" },
    });
    assert.equal(renewed.status, 200);
    assert.equal((renewed.body.auth as { lease_duration: number }).lease_duration, 600);
    assert.ok((vault.tokenTtlSeconds(token) ?? 0) > 590);

    const fixed = vault.createToken({ ttl: "1s", renewable: false });
    const refused = await call(vault, "POST", "auth/token/renew-self", { token: fixed, body: {} });
    assert.deepEqual([refused.status, refused.body], [400, { errors: ["lease is not renewable"] }]);
    await new Promise((r) => setTimeout(r, 1_100));
    const expired = await call(vault, "GET", "auth/token/lookup-self", { token: fixed });
    assert.deepEqual([expired.status, expired.body], [403, { errors: ["permission denied"] }]);
  });

  test("kubernetes auth login: bound names and namespaces, Vault's refusals", async () => {
    vault.writeKubernetesRole("osm-cert", {
      boundServiceAccountNames: ["osm-cert"],
      boundServiceAccountNamespaces: ["osm-system"],
      policies: ["osm-signer"],
      ttl: "1h",
    });
    const good = await call(vault, "POST", "auth/kubernetes/login", {
      body: { role: "osm-cert", jwt: fakeServiceAccountJwt("osm-system", "osm-cert") },
    });
    assert.equal(good.status, 200, good.text);
    const auth = good.body.auth as { client_token: string; policies: string[]; lease_duration: number };
    assert.deepEqual(auth.policies, ["default", "osm-signer"]);
    assert.equal(auth.lease_duration, 3600);
    const signed = await call(vault, "POST", "pki/sign/osm", {
      token: auth.client_token,
      body: { csr: (await csrFor({ cn: "x" })).pem, common_name: "a.b.cluster.local" },
    });
    assert.equal(signed.status, 200);
    const refusals: [Record<string, unknown>, number, string][] = [
      [
        { role: "osm-cert", jwt: fakeServiceAccountJwt("osm-system", "intruder") },
        403,
        "service account name not authorized",
      ],
      [
        { role: "osm-cert", jwt: fakeServiceAccountJwt("default", "osm-cert") },
        403,
        "namespace not authorized",
      ],
      [
        { role: "nope", jwt: fakeServiceAccountJwt("osm-system", "osm-cert") },
        400,
        'invalid role name "nope"',
      ],
      [
        { role: "osm-cert", jwt: fakeServiceAccountJwt("osm-system", "osm-cert", -10) },
        403,
        "permission denied",
      ],
      [{ role: "osm-cert" }, 400, "missing jwt"],
    ];
    for (const [body, status, message] of refusals) {
      const res = await call(vault, "POST", "auth/kubernetes/login", { body });
      assert.deepEqual([res.status, res.body], [status, { errors: [message] }], message);
    }
  });

  test("sealed: 503 Vault is sealed everywhere but health and seal-status; unseal restores", async () => {
    vault.seal();
    try {
      const res = await call(vault, "POST", "pki/sign/osm", { token: signer, body: { csr: "x" } });
      assert.deepEqual([res.status, res.body], [503, { errors: ["Vault is sealed"] }]);
      assert.equal((await call(vault, "GET", "pki/ca_chain")).status, 503);
      const health = await call(vault, "GET", "sys/health");
      assert.equal(health.status, 503);
      assert.equal(health.body.sealed, true);
      assert.equal((await call(vault, "GET", "sys/health?sealedcode=200")).status, 200);
      assert.equal((await call(vault, "GET", "sys/seal-status")).body.sealed, true);
    } finally {
      vault.unseal();
    }
    assert.equal((await call(vault, "GET", "sys/health")).status, 200);
  });

  test("standby: 429 on health (200 with standbyok), 307 to the active node otherwise", async () => {
    vault.standbyOf = "http://active.vault:8200";
    try {
      assert.equal((await call(vault, "GET", "sys/health")).status, 429);
      assert.equal((await call(vault, "GET", "sys/health?standbyok=true")).status, 200);
      const res = await call(vault, "GET", "auth/token/lookup-self", { token: signer });
      assert.equal(res.status, 307);
      assert.equal(res.headers.get("location"), "http://active.vault:8200/v1/auth/token/lookup-self");
      vault.standbyOf = null;
      const lost = await call(vault, "GET", "auth/token/lookup-self", { token: signer });
      assert.deepEqual(
        [lost.status, lost.body],
        [500, { errors: ["local node not active but active cluster node not found"] }],
      );
    } finally {
      vault.standbyOf = undefined;
    }
  });

  test("404 for unknown routes, 405 for unsupported operations", async () => {
    const missing = await call(vault, "GET", "pki/nothing/here", { token: vault.rootToken });
    assert.deepEqual(
      [missing.status, missing.body],
      [404, { errors: ['no handler for route "pki/nothing/here". route entry not found.'] }],
    );
    const del = await call(vault, "DELETE", "pki/sign/osm", { token: vault.rootToken });
    assert.deepEqual([del.status, del.body], [405, { errors: ["unsupported operation"] }]);
  });

  test("faults: injected status, dropped connection, latency; all recorded", async () => {
    vault.failNext(1, 502, "pki/sign");
    const failed = await call(vault, "POST", "pki/sign/osm", { token: signer, body: {} });
    assert.equal(failed.status, 502);
    vault.dropNext(1, "pki/ca_chain");
    await assert.rejects(call(vault, "GET", "pki/ca_chain"));
    assert.equal(vault.requestsTo("pki/ca_chain").at(-1)?.status, 0);
    vault.latencyMs = 300;
    const started = Date.now();
    await call(vault, "GET", "sys/health");
    assert.ok(Date.now() - started >= 290);
    vault.clearFaults();
  });
});

describe("fake Vault: namespace, intermediate CA, HTTPS", () => {
  test("tokens live in their namespace; the chain is intermediate then root; TLS with its own CA", async () => {
    const vault = await FakeVault.start({ namespace: "team-a", intermediate: true, tls: true });
    try {
      assert.ok(vault.url.startsWith("https://"));
      assert.ok(vault.listenerCaPem);
      vault.writeRole("osm", MESH_ROLE);
      const token = vault.createToken({ policies: ["root"] });
      const { Agent } = await import("undici");
      const dispatcher = new Agent({ connect: { ca: vault.listenerCaPem } });
      const go = async (namespace?: string) => {
        const res = await fetch(`${vault.url}/v1/pki/sign/osm`, {
          method: "POST",
          headers: { "x-vault-token": token, ...(namespace ? { "x-vault-namespace": namespace } : {}) },
          body: JSON.stringify({ csr: (await csrFor({ cn: "x" })).pem, common_name: "a.b.cluster.local" }),
          // @ts-expect-error undici's fetch option, not in the DOM types
          dispatcher,
        });
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      };
      assert.equal((await go()).status, 403, "a token of team-a is unknown in the root namespace");
      const res = await go("team-a/");
      assert.equal(res.status, 200);
      const data = res.body.data as { certificate: string; ca_chain: string[]; issuing_ca: string };
      assert.equal(data.ca_chain.length, 2);
      const [intermediate, root] = data.ca_chain.map((p) => new X509Certificate(p));
      const leaf = new X509Certificate(data.certificate);
      assert.ok(intermediate && root);
      assert.ok(leaf.verify(intermediate.publicKey) && intermediate.verify(root.publicKey));
      assert.equal(intermediate.fingerprint256, new X509Certificate(data.issuing_ca).fingerprint256);
      assert.equal(root.fingerprint256, new X509Certificate(vault.rootPem).fingerprint256);
      await dispatcher.close();
    } finally {
      await vault.close();
    }
  });
});
