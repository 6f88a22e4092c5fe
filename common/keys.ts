// Key algorithms a workload or CA may use (DESIGN.md §6): ECDSA P-256 by default, P-384 and RSA
// 2048/3072/4096 on request. Keys live as KeyObjects so OpenSSL parses them once, never per use.

import { generateKeyPair as generateKeyPairCallback, generateKeyPairSync, type KeyObject } from "node:crypto";

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

type GenerateArgs =
  | ["ec", { namedCurve: string }]
  | ["rsa", { modulusLength: number; publicExponent: number }];

function generateArgs(alg: KeyAlgorithm): GenerateArgs {
  switch (alg) {
    case "ecdsa-p256":
      return ["ec", { namedCurve: "P-256" }];
    case "ecdsa-p384":
      return ["ec", { namedCurve: "P-384" }];
    case "rsa-2048":
      return ["rsa", { modulusLength: 2048, publicExponent: 65537 }];
    case "rsa-3072":
      return ["rsa", { modulusLength: 3072, publicExponent: 65537 }];
    case "rsa-4096":
      return ["rsa", { modulusLength: 4096, publicExponent: 65537 }];
    default:
      throw new KeyAlgorithmError(
        `invalid key algorithm "${String(alg)}": must be one of ${KEY_ALGORITHMS.join(", ")}`,
      );
  }
}

/** Synchronous: an EC key takes well under a millisecond; RSA-4096 can take a second, so prefer the async form there. */
export function generateKeyPair(alg: KeyAlgorithm): KeyPair {
  const [type, options] = generateArgs(alg);
  return type === "ec" ? generateKeyPairSync(type, options) : generateKeyPairSync(type, options);
}

/** Generates on libuv's thread pool, so RSA generation does not stall the event loop (SDS streams, gRPC). */
export function generateKeyPairAsync(alg: KeyAlgorithm): Promise<KeyPair> {
  const [type, options] = generateArgs(alg);
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, publicKey: KeyObject, privateKey: KeyObject): void => {
      if (err) reject(err);
      else resolve({ privateKey, publicKey });
    };
    if (type === "ec") generateKeyPairCallback(type, options, done);
    else generateKeyPairCallback(type, options, done);
  });
}

/** PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"), the form Envoy, OpenSSL and Kubernetes Secrets all read. */
export function privateKeyToPem(key: KeyObject): string {
  if (key.type !== "private") throw new KeyAlgorithmError(`expected a private key, got a ${key.type} key`);
  return key.export({ format: "pem", type: "pkcs8" }) as string;
}
