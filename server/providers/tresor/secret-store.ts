// Tresor's root in Kubernetes (DESIGN.md §7): the Secret named by --ca-bundle-secret-name in the
// OSM namespace, keys `ca.crt`, `private.key`, `expiration` holding exactly the CaMaterial text,
// base64 as the API stores it. The API server is the referee when replicas start together: create
// fails with AlreadyExists for all but one, and the losers read the winner. An existing Secret is
// never written, so a malformed one stops start-up instead of silently replacing the mesh's root.

import {
  isAlreadyExists,
  isNotFound,
  type KubeClient,
  SECRETS,
  type Secret,
} from "../../kubernetes/client.js";
import { type CaMaterial, CaMaterialError } from "./ca-material.js";
import type { RotationStore } from "./rotation-store.js";
import type { CaStore } from "./tresor.js";

export const DEFAULT_CA_BUNDLE_SECRET_NAME = "osm-ca-bundle";
export const DEFAULT_OSM_NAMESPACE = "osm-system";

const KEYS = { caCert: "ca.crt", privateKey: "private.key", expiration: "expiration" } as const;
type Field = keyof typeof KEYS;
const FIELDS: readonly Field[] = ["caCert", "privateKey", "expiration"];
// A winner that vanishes between our failed create and the read (deleted by hand) is retried this often.
const CREATE_ROUNDS = 3;

export interface SecretCaStoreOptions {
  readonly client: Pick<KubeClient, "get" | "create">;
  readonly namespace?: string;
  readonly name?: string;
  /** Labels for a Secret this store creates; an existing Secret is never relabelled. */
  readonly labels?: Readonly<Record<string, string>>;
  /** Root rotation state and roots (SecretRotationStore); without it the root never changes. */
  readonly rotation?: RotationStore;
}

export class SecretCaStore implements CaStore {
  readonly namespace: string;
  readonly name: string;
  readonly rotation: RotationStore | undefined;
  private readonly client: Pick<KubeClient, "get" | "create">;
  private readonly labels: Readonly<Record<string, string>> | undefined;

  constructor(options: SecretCaStoreOptions) {
    this.client = options.client;
    this.namespace = options.namespace ?? DEFAULT_OSM_NAMESPACE;
    this.name = options.name ?? DEFAULT_CA_BUNDLE_SECRET_NAME;
    this.labels = options.labels;
    this.rotation = options.rotation;
  }

  describe(): string {
    return `Secret ${this.namespace}/${this.name}`;
  }

  /** The stored material, null when the Secret does not exist. A Secret missing any key is an error. */
  async load(): Promise<CaMaterial | null> {
    let secret: Secret;
    try {
      secret = await this.client.get(SECRETS, this.name, { namespace: this.namespace });
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
    return this.materialOf(secret);
  }

  /** Creates the Secret unless another replica got there first; returns whichever material won. */
  async createIfAbsent(material: CaMaterial): Promise<CaMaterial> {
    const data: Record<string, string> = {};
    for (const field of FIELDS) data[KEYS[field]] = Buffer.from(material[field], "utf8").toString("base64");
    const secret: Secret = {
      metadata: {
        name: this.name,
        namespace: this.namespace,
        ...(this.labels ? { labels: { ...this.labels } } : {}),
      },
      type: "Opaque",
      data,
    };
    for (let round = 1; ; round++) {
      try {
        // Create-if-absent: AlreadyExists is an answer, so a create that may have landed can repeat.
        await this.client.create(SECRETS, secret, { namespace: this.namespace, idempotent: true });
        return material;
      } catch (error) {
        if (!isAlreadyExists(error)) throw error;
      }
      const winner = await this.load();
      // A create retried after a lost response also lands here, and reads back our own material.
      if (winner !== null) return sameMaterial(winner, material) ? material : winner;
      if (round >= CREATE_ROUNDS) {
        throw new CaMaterialError(
          `${this.describe()}: exists and vanishes again on every read; is something deleting it?`,
        );
      }
    }
  }

  private materialOf(secret: Secret): CaMaterial {
    const data = secret.data ?? {};
    const missing = FIELDS.filter((f) => data[KEYS[f]] === undefined).map((f) => KEYS[f]);
    if (missing.length > 0) {
      let hint = `Add the missing keys (a bring-your-own root needs all of ${FIELDS.map((f) => KEYS[f]).join(", ")}), or delete the Secret to let osm-cert create a new root.`;
      if (data["tls.crt"] !== undefined) {
        hint = `It looks like a kubernetes.io/tls Secret: copy tls.crt to ca.crt and tls.key to private.key, and add expiration (the certificate's notAfter, ISO 8601). ${hint}`;
      }
      throw new CaMaterialError(
        `${this.describe()}: incomplete CA (missing ${missing.join(", ")}); refusing to overwrite it. ${hint}`,
      );
    }
    const text = (field: Field): string => Buffer.from(data[KEYS[field]] ?? "", "base64").toString("utf8");
    return { caCert: text("caCert"), privateKey: text("privateKey"), expiration: text("expiration") };
  }
}

function sameMaterial(a: CaMaterial, b: CaMaterial): boolean {
  return FIELDS.every((field) => a[field] === b[field]);
}
