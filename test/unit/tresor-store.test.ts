import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile, stat, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { CaMaterialError, generateRoot, loadCa } from "../../server/providers/tresor/ca-material.js";
import { DirectoryCaStore } from "../../server/providers/tresor/directory-store.js";
import { TresorProvider } from "../../server/providers/tresor/tresor.js";
import { tempDir } from "../helpers/pki.js";

const ROOT = { keyAlgorithm: "ecdsa-p256", commonName: "osm.root", validityMs: 87_600 * 3_600_000 } as const;

test("first start generates a root with the seed's three files; restart reuses it", async () => {
  const dir = await tempDir();
  try {
    const store = new DirectoryCaStore(dir.path);
    const first = await TresorProvider.open({ store, root: ROOT });
    const cert = new X509Certificate(await readFile(join(dir.path, "ca.crt")));
    assert.equal(cert.subject, "CN=osm.root");
    assert.equal(cert.ca, true);
    const expiration = (await readFile(join(dir.path, "expiration"), "utf8")).trim();
    assert.match(expiration, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(Date.parse(expiration), Date.parse(cert.validTo));
    assert.equal((await stat(join(dir.path, "private.key"))).mode & 0o777, 0o600);
    const again = await TresorProvider.open({ store, root: ROOT });
    assert.deepEqual(again.trustBundle(), first.trustBundle());
  } finally {
    await dir.remove();
  }
});

test("RSA roots are selectable", async () => {
  const dir = await tempDir();
  try {
    const ca = await TresorProvider.open({
      store: new DirectoryCaStore(dir.path),
      root: { ...ROOT, keyAlgorithm: "rsa-2048" },
    });
    assert.equal(new X509Certificate(ca.trustBundle().roots[0] as string).publicKey.asymmetricKeyType, "rsa");
  } finally {
    await dir.remove();
  }
});

test("processes racing on an empty directory end with one root", async () => {
  const dir = await tempDir();
  try {
    const opened = await Promise.all(
      Array.from({ length: 5 }, () =>
        TresorProvider.open({ store: new DirectoryCaStore(dir.path), root: ROOT }),
      ),
    );
    const versions = new Set(opened.map((p) => p.trustBundle().version));
    assert.equal(versions.size, 1);
  } finally {
    await dir.remove();
  }
});

test("partial, corrupt or mismatched material stops start-up and is never overwritten", async () => {
  const dir = await tempDir();
  try {
    const store = new DirectoryCaStore(dir.path);
    await TresorProvider.open({ store, root: ROOT });
    const keyBefore = await readFile(join(dir.path, "private.key"), "utf8");

    await writeFile(join(dir.path, "private.key"), (await generateRoot(ROOT)).privateKey);
    await assert.rejects(
      TresorProvider.open({ store, root: ROOT }),
      /private\.key does not match the public key in ca\.crt/,
    );
    await writeFile(join(dir.path, "private.key"), keyBefore);

    const expirationBefore = await readFile(join(dir.path, "expiration"), "utf8");
    await writeFile(join(dir.path, "expiration"), "2031-01-11T23:15:09.299Z");
    await assert.rejects(TresorProvider.open({ store, root: ROOT }), /does not match ca\.crt notAfter/);
    await writeFile(join(dir.path, "expiration"), "tomorrow");
    await assert.rejects(TresorProvider.open({ store, root: ROOT }), /not an ISO 8601 time/);
    await writeFile(join(dir.path, "expiration"), expirationBefore);

    const certBefore = await readFile(join(dir.path, "ca.crt"), "utf8");
    await writeFile(join(dir.path, "ca.crt"), "garbage");
    await assert.rejects(TresorProvider.open({ store, root: ROOT }), /ca\.crt is not a PEM certificate/);
    await writeFile(join(dir.path, "ca.crt"), certBefore);

    await unlink(join(dir.path, "expiration"));
    await assert.rejects(
      TresorProvider.open({ store, root: ROOT }),
      /incomplete CA \(missing expiration\); refusing to overwrite/,
    );
    assert.equal(await readFile(join(dir.path, "private.key"), "utf8"), keyBefore, "the key is untouched");
    assert.equal(await readFile(join(dir.path, "ca.crt"), "utf8"), certBefore);
  } finally {
    await dir.remove();
  }
});

test("an expired or non-CA root is refused", async () => {
  const expired = await generateRoot({ ...ROOT, validityMs: 1_000 }, new Date(Date.now() - 10_000));
  assert.throws(
    () => loadCa(expired, "test"),
    (e: unknown) => e instanceof CaMaterialError && /expired/.test(e.message),
  );
});
