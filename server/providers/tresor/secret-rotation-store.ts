// Root rotation in Kubernetes mode (issue 9): the rotation state and every root of a rotation live
// in one Secret beside the CA bundle Secret, `<ca-bundle-secret-name>-rotation` in the OSM
// namespace. One object, so a reader never sees a state naming a root that is not there, and RBAC
// can pin every verb but create to one name. Keys: `rotation.json` (the state) and
// `root.<id>.{ca.crt,private.key,expiration}` per root. Every write is a read-modify-write with the
// object's resourceVersion as precondition: a 409 re-reads and retries, a bounded number of times.
// The roots' roles are mirrored in the annotation `osm-cert.io/root-roles` in the words of OSM's
// MeshRootCertificate (active: signs and is trusted; passive: trusted only; inactive: neither).

import { backoffDelay } from "../../../common/lifecycle.js";
import {
  isAlreadyExists,
  isConflict,
  isGone,
  isNotFound,
  type KubeClient,
  SECRETS,
  type Secret,
} from "../../kubernetes/client.js";
import { type CaMaterial, CaMaterialError } from "./ca-material.js";
import {
  parseRotationState,
  type RotationState,
  RotationStateError,
  serializeRotationState,
} from "./rotation-state.js";
import type { RotationStore } from "./rotation-store.js";
import { SecretCaStore } from "./secret-store.js";

export const ROTATION_SECRET_SUFFIX = "-rotation";
export const STATE_KEY = "rotation.json";
export const ROLES_ANNOTATION = "osm-cert.io/root-roles";
const ROOT_KEYS = { caCert: "ca.crt", privateKey: "private.key", expiration: "expiration" } as const;
type Field = keyof typeof ROOT_KEYS;
const FIELDS: readonly Field[] = ["caCert", "privateKey", "expiration"];
/** Read-modify-write rounds before a write gives up on a Secret that keeps changing under it. */
const WRITE_ROUNDS = 5;

export type SecretRotationClient = Pick<KubeClient, "get" | "create" | "update" | "watch">;

export interface SecretRotationStoreOptions {
  readonly client: SecretRotationClient;
  readonly namespace: string;
  /** The plain CA bundle Secret (ca.crt, private.key, expiration); the rotation Secret is named after it. */
  readonly caBundleSecretName: string;
}

/** MeshRootCertificate-style role of each root of a state. */
export function rootRoles(state: RotationState): Record<string, "active" | "passive" | "inactive"> {
  const roles: Record<string, "active" | "passive" | "inactive"> = {};
  for (const root of state.roots) {
    roles[root.id] =
      root.id === state.signing ? "active" : state.bundle.includes(root.id) ? "passive" : "inactive";
  }
  return roles;
}

const decode = (value: string | undefined): string | undefined =>
  value === undefined ? undefined : Buffer.from(value, "base64").toString("utf8");
const encode = (text: string): string => Buffer.from(text, "utf8").toString("base64");
const rootKey = (id: string, field: Field): string => `root.${id}.${ROOT_KEYS[field]}`;

export class SecretRotationStore implements RotationStore {
  readonly namespace: string;
  readonly name: string;
  private readonly client: SecretRotationClient;
  private readonly plainName: string;
  /**
   * The state text this store last read or wrote: a write whose Secret holds anything else was
   * raced by another writer (a second rotate-root), and stops instead of overwriting it.
   */
  private expected: string | null | undefined;

  constructor(options: SecretRotationStoreOptions) {
    this.client = options.client;
    this.namespace = options.namespace;
    this.plainName = options.caBundleSecretName;
    this.name = `${options.caBundleSecretName}${ROTATION_SECRET_SUFFIX}`;
  }

  describe(): string {
    return `Secret ${this.namespace}/${this.name}`;
  }

  async readState(): Promise<RotationState | null> {
    const secret = await this.read();
    const text = decode(secret?.data?.[STATE_KEY]) ?? null;
    this.expected = text;
    return text === null ? null : parseRotationState(text, `${this.describe()} key ${STATE_KEY}`);
  }

  async writeState(state: RotationState): Promise<void> {
    const text = serializeRotationState(state);
    await this.modify((secret) => {
      const current = decode(secret.data?.[STATE_KEY]) ?? null;
      if (current === text) return false; // a retried write that landed
      if (this.expected !== undefined && current !== this.expected) {
        throw new RotationStateError(
          `${this.describe()}: the rotation state changed while this command ran (another rotate-root?); ` +
            "nothing was written. Rerun to continue from the state as it is now.",
        );
      }
      secret.data = { ...secret.data, [STATE_KEY]: encode(text) };
      secret.metadata = {
        ...secret.metadata,
        annotations: {
          ...secret.metadata?.annotations,
          [ROLES_ANNOTATION]: JSON.stringify(rootRoles(state)),
        },
      };
      return true;
    });
    this.expected = text;
  }

  async readRoot(id: string): Promise<CaMaterial> {
    checkId(id);
    const material = materialOf(await this.read(), id);
    if (material === null) {
      throw new CaMaterialError(`${this.describe()}: the root ${id} named by ${STATE_KEY} is missing`);
    }
    return material;
  }

  async writeRoot(id: string, material: CaMaterial): Promise<void> {
    checkId(id);
    await this.modify((secret) => {
      const present = materialOf(secret, id);
      if (present !== null) {
        if (present.caCert.trim() !== material.caCert.trim())
          throw new CaMaterialError(`${this.describe()}: already holds a different root ${id}`);
        return false;
      }
      const data = { ...secret.data };
      for (const field of FIELDS) data[rootKey(id, field)] = encode(material[field]);
      secret.data = data;
      return true;
    });
  }

  async promote(material: CaMaterial): Promise<void> {
    await this.modify((secret) => {
      if (FIELDS.every((f) => decode(secret.data?.[ROOT_KEYS[f]]) === material[f])) return false;
      const data = { ...secret.data };
      for (const f of FIELDS) data[ROOT_KEYS[f]] = encode(material[f]);
      secret.data = data;
      return true;
    }, this.plainName);
  }

  watch(onChange: () => void): () => void {
    const stop = new AbortController();
    void this.follow(onChange, stop.signal);
    return () => stop.abort();
  }

  private async follow(onChange: () => void, signal: AbortSignal): Promise<void> {
    let resourceVersion: string | undefined;
    let failures = 0;
    while (!signal.aborted) {
      try {
        // fieldSelector by name: what RBAC with resourceNames allows for list and watch.
        for await (const event of this.client.watch(SECRETS, {
          namespace: this.namespace,
          fieldSelector: `metadata.name=${this.name}`,
          ...(resourceVersion === undefined ? {} : { resourceVersion }),
          signal,
        })) {
          failures = 0;
          resourceVersion = event.object.metadata?.resourceVersion ?? resourceVersion;
          if (event.type !== "BOOKMARK") onChange();
        }
      } catch (error) {
        if (signal.aborted) return;
        if (isGone(error)) {
          resourceVersion = undefined;
          continue;
        }
        // The follower's poll keeps it current meanwhile; the watch only makes it prompt.
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(failures++, 500, 30_000)).unref());
      }
    }
  }

  private async read(name = this.name): Promise<Secret | null> {
    try {
      return await this.client.get(SECRETS, name, { namespace: this.namespace });
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  /**
   * Reads the Secret, lets `change` edit it (false: nothing to write), and writes it back only if
   * nobody wrote in between; a missing Secret is created. Conflicts re-read, a bounded number of times.
   */
  private async modify(change: (secret: Secret) => boolean, name = this.name): Promise<void> {
    for (let round = 1; ; round++) {
      const current = await this.read(name);
      const secret: Secret = current ?? {
        metadata: { name, namespace: this.namespace, labels: { "app.kubernetes.io/managed-by": "osm-cert" } },
        type: "Opaque",
        data: {},
      };
      if (!change(secret)) return;
      try {
        if (current === null) await this.client.create(SECRETS, secret, { namespace: this.namespace });
        else await this.client.update(SECRETS, secret, { namespace: this.namespace });
        return;
      } catch (error) {
        if (!isConflict(error) && !isAlreadyExists(error)) throw error;
        if (round >= WRITE_ROUNDS) {
          throw new RotationStateError(
            `Secret ${this.namespace}/${name}: changed by someone else on each of ${WRITE_ROUNDS} tries; nothing was written`,
          );
        }
      }
    }
  }
}

function checkId(id: string): void {
  if (!/^[0-9a-f]{16}$/.test(id)) throw new CaMaterialError(`invalid root id ${JSON.stringify(id)}`);
}

function materialOf(secret: Secret | null, id: string): CaMaterial | null {
  const data = secret?.data ?? {};
  const present = FIELDS.filter((f) => data[rootKey(id, f)] !== undefined);
  if (present.length === 0) return null;
  if (present.length < FIELDS.length) {
    throw new CaMaterialError(
      `Secret ${secret?.metadata?.namespace}/${secret?.metadata?.name}: root ${id} is incomplete (has only ${present
        .map((f) => rootKey(id, f))
        .join(", ")})`,
    );
  }
  const text = (f: Field) => decode(data[rootKey(id, f)]) as string;
  return { caCert: text("caCert"), privateKey: text("privateKey"), expiration: text("expiration") };
}

/**
 * The CA bundle Secret together with its rotation Secret: what the signing server and the webhook
 * both read, so both follow a rotation the same way.
 */
export function followedSecretCaStore(
  client: SecretRotationClient,
  namespace: string,
  caBundleSecretName: string,
): SecretCaStore {
  return new SecretCaStore({
    client,
    namespace,
    name: caBundleSecretName,
    rotation: new SecretRotationStore({ client, namespace, caBundleSecretName }),
  });
}
