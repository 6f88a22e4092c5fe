// One CSR's trip through cert-manager: create a CertificateRequest, watch it (from the version the
// create returned, so no change is missed and nothing polls) until the issuer answers or the
// deadline passes, and delete it whatever happened. cert-manager's own reason and message travel
// with every refusal.

import { isGone, isNotFound, type KubeClient, KubeConnectionError } from "../../kubernetes/client.js";
import { ProviderError } from "../provider.js";
import { CERTIFICATE_REQUESTS, type CertificateRequest, type Condition, conditionOf } from "./resources.js";

export interface RequestOutcome {
  /** PEM from status.certificate (leaf first, as the issuer wrote it). */
  readonly certificatePem: string;
}

/** A refusal by cert-manager, with its condition's reason and message, for the log and the caller. */
export class CertManagerRefusal extends ProviderError {
  constructor(
    reason: ProviderError["reason"],
    message: string,
    readonly requestName: string,
    readonly condition: string,
    readonly conditionReason: string | undefined,
    readonly conditionMessage: string | undefined,
  ) {
    super(reason, message);
  }
}

export interface RunOptions {
  readonly client: Pick<KubeClient, "create" | "watch" | "get" | "delete">;
  readonly namespace: string;
  readonly object: CertificateRequest;
  readonly deadlineMs: number;
  readonly preserve: boolean;
  readonly signal?: AbortSignal;
  /** Told when the request could not be deleted (the start-up sweep will). */
  readonly onDeleteFailed?: (name: string, error: unknown) => void;
}

const describe = (c: Condition | undefined): string =>
  c === undefined
    ? "none"
    : `${c.status}${c.reason ? ` (${c.reason}${c.message ? `: ${c.message}` : ""})` : ""}`;

/** What the request's conditions say: finished (with a certificate), refused, or still open. */
function verdict(cr: CertificateRequest, name: string): RequestOutcome | CertManagerRefusal | null {
  const ref = `CertificateRequest ${cr.metadata?.namespace ?? ""}/${name}`;
  const denied = conditionOf(cr, "Denied");
  if (denied?.status === "True") {
    return new CertManagerRefusal(
      "denied",
      `${ref} was denied by ${denied.reason ?? "an approver"}: ${denied.message ?? "no message"}`,
      name,
      "Denied",
      denied.reason,
      denied.message,
    );
  }
  const invalid = conditionOf(cr, "InvalidRequest");
  if (invalid?.status === "True") {
    return new CertManagerRefusal(
      "invalid",
      `${ref} is invalid for the issuer (${invalid.reason ?? "InvalidRequest"}): ${invalid.message ?? "no message"}`,
      name,
      "InvalidRequest",
      invalid.reason,
      invalid.message,
    );
  }
  const ready = conditionOf(cr, "Ready");
  if (ready?.status === "False" && (ready.reason === "Failed" || ready.reason === "Denied")) {
    return new CertManagerRefusal(
      ready.reason === "Denied" ? "denied" : "unavailable",
      `${ref} failed (${ready.reason}): ${ready.message ?? "no message"}`,
      name,
      "Ready",
      ready.reason,
      ready.message,
    );
  }
  if (ready?.status === "True") {
    const encoded = cr.status?.certificate;
    if (typeof encoded !== "string" || encoded === "") {
      return new CertManagerRefusal(
        "internal",
        `${ref} is Ready but has no status.certificate`,
        name,
        "Ready",
        ready.reason,
        ready.message,
      );
    }
    return { certificatePem: Buffer.from(encoded, "base64").toString("utf8") };
  }
  return null;
}

export async function runCertificateRequest(options: RunOptions): Promise<RequestOutcome> {
  const { client, namespace, deadlineMs, preserve } = options;
  const deadline = AbortSignal.timeout(deadlineMs);
  const signal = options.signal ? AbortSignal.any([deadline, options.signal]) : deadline;
  let created: CertificateRequest;
  try {
    created = await client.create(CERTIFICATE_REQUESTS, options.object, { namespace, signal });
  } catch (error) {
    if (signal.aborted) throw timeout(null, deadlineMs, "could not create the CertificateRequest");
    throw error;
  }
  const name = created.metadata?.name as string;
  try {
    return await follow(client, namespace, created, name, signal, deadlineMs);
  } finally {
    if (!preserve) {
      // Never tied to the deadline: a refused or late request must still go.
      await client
        .delete(CERTIFICATE_REQUESTS, name, { namespace, signal: AbortSignal.timeout(10_000) })
        .catch((error: unknown) => {
          if (!isNotFound(error)) options.onDeleteFailed?.(name, error);
        });
    }
  }
}

async function follow(
  client: RunOptions["client"],
  namespace: string,
  created: CertificateRequest,
  name: string,
  signal: AbortSignal,
  deadlineMs: number,
): Promise<RequestOutcome> {
  let current = created;
  let resourceVersion = created.metadata?.resourceVersion;
  for (;;) {
    const found = verdict(current, name);
    if (found instanceof ProviderError) throw found;
    if (found !== null) return found;
    if (signal.aborted) throw timeout(current, deadlineMs, name);
    try {
      for await (const event of client.watch(CERTIFICATE_REQUESTS, {
        namespace,
        fieldSelector: `metadata.name=${name}`,
        ...(resourceVersion === undefined ? {} : { resourceVersion }),
        timeoutSeconds: Math.max(1, Math.ceil(deadlineMs / 1000) + 5),
        signal,
      })) {
        resourceVersion = event.object.metadata?.resourceVersion ?? resourceVersion;
        if (event.type === "BOOKMARK") continue;
        if (event.type === "DELETED") {
          throw new ProviderError(
            "unavailable",
            `CertificateRequest ${namespace}/${name} was deleted by someone else before it was signed; retry`,
          );
        }
        current = event.object;
        const verdictNow = verdict(current, name);
        if (verdictNow instanceof ProviderError) throw verdictNow;
        if (verdictNow !== null) return verdictNow;
      }
    } catch (error) {
      if (signal.aborted) throw timeout(current, deadlineMs, name);
      // The watched version is gone or the stream broke: read the object, then watch on from it.
      if (!isGone(error) && !(error instanceof KubeConnectionError)) throw error;
      current = await client.get(CERTIFICATE_REQUESTS, name, { namespace, signal });
      resourceVersion = current.metadata?.resourceVersion;
    }
  }
}

function timeout(current: CertificateRequest | null, deadlineMs: number, name: string): ProviderError {
  const seconds = Math.round(deadlineMs / 100) / 10;
  if (current === null) return new ProviderError("deadline", `cert-manager: ${name} within ${seconds}s`);
  const approved = conditionOf(current, "Approved");
  const hint =
    approved === undefined
      ? "not approved: is cert-manager's approver (or approver-policy) running and allowed to approve for this issuer?"
      : `approved, not signed: is the issuer Ready and cert-manager's controller running? Ready: ${describe(conditionOf(current, "Ready"))}`;
  return new ProviderError(
    "deadline",
    `CertificateRequest ${current.metadata?.namespace ?? ""}/${name} not signed within ${seconds}s: ${hint}`,
  );
}
