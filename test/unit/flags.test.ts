import assert from "node:assert/strict";
import { test } from "node:test";
import { FlagError, type FlagTable, HelpRequested, parseFlags } from "../../common/flags.js";
import { SERVER_FLAGS } from "../../server/flags.js";

const TABLE = {
  "certificate-manager": {
    kind: "string",
    help: "backend",
    default: "tresor",
    env: "CERT_MANAGER",
    choices: ["tresor", "vault"],
  },
  "service-cert-validity-duration": { kind: "duration", help: "validity", default: "24h" },
  "server-san": { kind: "list", help: "names", default: "localhost" },
  server: { kind: "string", help: "target", required: true },
  fraction: { kind: "number", help: "f", default: "0.5" },
} as const satisfies FlagTable;

test("flags, environment, defaults: in that order of precedence", () => {
  const env = { CERT_MANAGER: "vault", OSM_CERT_SERVER: "from-env:1" };
  const parsed = parseFlags(
    "server",
    TABLE,
    ["--server", "host:1", "--server-san", "a,b", "--server-san", "c"],
    env,
  );
  assert.equal(parsed.server, "host:1");
  assert.equal(parsed["certificate-manager"], "vault");
  assert.deepEqual(parsed["server-san"], ["a", "b", "c"]);
  assert.equal(parsed["service-cert-validity-duration"], 86_400_000);
  assert.equal(parsed.fraction, 0.5);
  assert.equal(parseFlags("server", TABLE, [], env).server, "from-env:1");
});

test("bad values fail with one line naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [
      ["--server", "x", "--service-cert-validity-duration", "abc"],
      /invalid --service-cert-validity-duration: invalid duration "abc"/,
    ],
    [
      ["--server", "x", "--certificate-manager", "acme"],
      /invalid --certificate-manager: "acme" is not one of tresor, vault/,
    ],
    [["--server", "x", "--fraction", "half"], /invalid --fraction: "half" is not a number/],
    [["--server", "x", "--no-such-flag"], /Unknown option '--no-such-flag'/],
    [[], /missing required flag --server \(or OSM_CERT_SERVER\)/],
  ];
  for (const [argv, pattern] of cases) {
    assert.throws(
      () => parseFlags("server", TABLE, argv, {}),
      (e: unknown) =>
        e instanceof FlagError && e.exitCode === 2 && pattern.test(e.message) && !e.message.includes("\n"),
      argv.join(" "),
    );
  }
});

test("--help lists every flag with its environment variable", () => {
  try {
    parseFlags("server", TABLE, ["--help"], {});
    assert.fail("expected help");
  } catch (error) {
    assert.ok(error instanceof HelpRequested);
    assert.match(error.message, /--certificate-manager <tresor\|vault>/);
    assert.match(error.message, /env CERT_MANAGER/);
    assert.match(error.message, /env OSM_CERT_SERVICE_CERT_VALIDITY_DURATION/);
  }
});

test("--namespace-selector is checked at start-up", async () => {
  const { checkLabelSelector } = await import("../../server/flags.js");
  for (const good of [
    "",
    "openservicemesh.io/monitored-by",
    "openservicemesh.io/monitored-by=osm",
    "a!=b,!c",
    "env in (prod, staging),tier notin (x)",
  ]) {
    assert.doesNotThrow(() => checkLabelSelector(good), good);
  }
  for (const bad of ["a=b=c", "in (x)", "bad key", "a in x", "-a"]) {
    assert.throws(() => checkLabelSelector(bad), /is not a label selector term/, bad);
  }
});

test("the server's load and worker flags refuse what is not a count or a rate, naming the flag", () => {
  const cases: [string, string][] = [
    ["--max-in-flight-signings", "0"],
    ["--max-in-flight-signings", "many"],
    ["--per-identity-signing-rate", "-1"],
    ["--per-identity-signing-rate", "1e3"],
    ["--per-identity-signing-burst", "0"],
    ["--per-identity-signing-burst", "2.5"],
    ["--workers", "0"],
    ["--workers", "65"],
    ["--workers", "two"],
  ];
  for (const [flag, value] of cases) {
    assert.throws(
      () => parseFlags("server", SERVER_FLAGS, [`${flag}=${value}`], {}),
      (error: unknown) =>
        error instanceof FlagError &&
        error.message.includes(`invalid ${flag}`) &&
        error.message.includes(value),
      `${flag} ${value}`,
    );
  }
  const ok = parseFlags(
    "server",
    SERVER_FLAGS,
    ["--per-identity-signing-rate", "0", "--workers", "auto", "--max-in-flight-signings", "64"],
    {},
  );
  assert.equal(ok["per-identity-signing-rate"], 0);
  assert.equal(ok.workers, "auto");
  assert.equal(ok["max-in-flight-signings"], 64);
});
