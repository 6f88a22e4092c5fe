// Key algorithms a workload or CA may use (DESIGN.md §6): ECDSA P-256 by default, P-384 and RSA
// 2048/3072/4096 on request. Keys live as KeyObjects so OpenSSL parses them once, never per use.

import { generateKeyPair as generateKeyPairCallback, type KeyObject } from "node:crypto";
import { promisify } from "node:util";

export type KeyAlgorithm = "ecdsa-p256" | "ecdsa-p384" | "rsa-2048" | "rsa-3072" | "rsa-4096";

export const KEY_ALGORITHMS: readonly KeyAlgorithm[] = [
  "ecdsa-p256",
  "ecdsa-p384",
  "rsa-2048",
  "rsa-3072",
  "rsa-4096",
];

export class KeyAlgorithmError extends Error {
  readonly code = "ERR_OSM_CERT_KEY_ALGORITHM";
}

export interface KeyPair {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

/** `--key-algorithm` values; case and surrounding spaces are forgiven, anything else names the choices. */
export function parseKeyAlgorithm(text: string): KeyAlgorithm {
  const wanted = text.trim().toLowerCase();
  const found = KEY_ALGORITHMS.find((alg) => alg === wanted);
  if (found === undefined) {
    throw new KeyAlgorithmError(
      `invalid key algorithm "${text}": must be one of ${KEY_ALGORITHMS.join(", ")}`,
    );
  }
  return found;
}

type KeySpec =
  | { readonly type: "ec"; readonly namedCurve: string }
  | { readonly type: "rsa"; readonly modulusLength: number };

const SPECS: Readonly<Record<KeyAlgorithm, KeySpec>> = {
  "ecdsa-p256": { type: "ec", namedCurve: "P-256" },
  "ecdsa-p384": { type: "ec", namedCurve: "P-384" },
  "rsa-2048": { type: "rsa", modulusLength: 2048 },
  "rsa-3072": { type: "rsa", modulusLength: 3072 },
  "rsa-4096": { type: "rsa", modulusLength: 4096 },
};

function specFor(alg: KeyAlgorithm): KeySpec {
  const spec = SPECS[alg];
  // Callers in plain JS (or a cast) could pass anything; fail with the same message as the flag.
  if (spec === undefined) return SPECS[parseKeyAlgorithm(String(alg))];
  return spec;
}

const generateKeyPairPromise = promisify(generateKeyPairCallback);

/**
 * Generates on libuv's thread pool, so RSA generation does not stall the event loop (SDS streams,
 * gRPC). There is deliberately no synchronous form: on Node 20.20 a key from generateKeyPairSync
 * whose asymmetricKeyDetails is then read can deadlock the main thread for good inside OpenSSL's
 * key-data mutex (a loop of that pattern hangs within seconds here; the asynchronous form did not
 * in hundreds of thousands of keys; test/unit/keygen-deadlock.test.ts keeps it that way).
 */
export function generateKeyPair(alg: KeyAlgorithm): Promise<KeyPair> {
  const spec = specFor(alg);
  if (spec.type === "ec") return generateKeyPairPromise("ec", { namedCurve: spec.namedCurve });
  return generateKeyPairPromise("rsa", { modulusLength: spec.modulusLength, publicExponent: 65537 });
}

/** PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"), the form Envoy, OpenSSL and Kubernetes Secrets all read. */
export function privateKeyToPem(key: KeyObject): string {
  if (key.type !== "private") throw new KeyAlgorithmError(`expected a private key, got a ${key.type} key`);
  return key.export({ format: "pem", type: "pkcs8" }) as string;
}
