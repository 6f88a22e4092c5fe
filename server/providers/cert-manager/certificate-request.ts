// One CSR's trip through cert-manager: create a CertificateRequest, follow it on the replica's
// shared watch (request-watch.ts; nothing polls, and a state the watch saw before the create
// returned is not missed) until the issuer answers or the deadline passes, and delete it whatever
// happened. cert-manager's own reason and message travel
// with every refusal.

import { isNotFound, type KubeClient } from "../../kubernetes/client.js";
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

/** The replica's shared watch, as one request sees it (request-watch.ts). */
export interface RequestFollower {
  follow(name: string, listener: (request: CertificateRequest | null) => void): () => void;
  readonly problem: string | null;
}

export interface RunOptions {
  readonly client: Pick<KubeClient, "create" | "delete">;
  readonly watch: RequestFollower;
  readonly namespace: string;
  readonly object: CertificateRequest;
  readonly deadlineMs: number;
  readonly preserve: boolean;
  readonly signal?: AbortSignal;
  /** Told when the request could not be deleted (the start-up sweep will). */
  readonly onDeleteFailed?: (name: string, error: unknown) => void;
}

/** A create that has not answered by then has failed; as the API server's own request timeout. */
const CREATE_TIMEOUT_MS = 30_000;

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
  // The create is not cut off at the deadline: one that reached the API server would leave a
  // request nobody deletes (and that the in-flight bound no longer counts). It gets its own
  // limit; a deadline that passed meanwhile is reported once the request is deleted again.
  const created = await client.create(CERTIFICATE_REQUESTS, options.object, {
    namespace,
    signal: AbortSignal.timeout(CREATE_TIMEOUT_MS),
  });
  const name = created.metadata?.name as string;
  try {
    if (signal.aborted) throw timeout(created, deadlineMs, name, null);
    return await follow(options.watch, created, name, signal, deadlineMs);
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

/** Waits on the replica's shared watch until the request's conditions decide, it is deleted, or the deadline. */
function follow(
  watch: RequestFollower,
  created: CertificateRequest,
  name: string,
  signal: AbortSignal,
  deadlineMs: number,
): Promise<RequestOutcome> {
  return new Promise<RequestOutcome>((resolve, reject) => {
    let current = created;
    let done = false;
    const finish = (settle: () => void) => {
      if (done) return;
      done = true;
      unfollow();
      signal.removeEventListener("abort", onAbort);
      settle();
    };
    const judge = (request: CertificateRequest | null) => {
      if (request === null) {
        finish(() =>
          reject(
            new ProviderError(
              "unavailable",
              `CertificateRequest ${created.metadata?.namespace ?? ""}/${name} was deleted by someone else before it was signed; retry`,
            ),
          ),
        );
        return;
      }
      current = request;
      const found = verdict(request, name);
      if (found instanceof ProviderError) finish(() => reject(found));
      else if (found !== null) finish(() => resolve(found));
    };
    const onAbort = () => finish(() => reject(timeout(current, deadlineMs, name, watch.problem)));
    // The watch may already know a newer state than the create returned: follow() replays it.
    let unfollow: () => void = () => {};
    judge(created);
    if (done) return;
    unfollow = watch.follow(name, judge);
    if (done) {
      unfollow();
      return;
    }
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
}

function timeout(
  current: CertificateRequest,
  deadlineMs: number,
  name: string,
  watchProblem: string | null,
): ProviderError {
  const seconds = Math.round(deadlineMs / 100) / 10;
  if (watchProblem !== null) {
    return new ProviderError(
      "deadline",
      `CertificateRequest ${current.metadata?.namespace ?? ""}/${name}: no answer seen within ${seconds}s; the CertificateRequest watch is failing: ${watchProblem}`,
    );
  }
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
