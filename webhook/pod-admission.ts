// One admission request for a pod → the answer and how to count it. Only CREATE mutates: a pod's
// containers and volumes are immutable after creation, so a patch on UPDATE could only fail.

import type { AdmissionAnswer, AdmissionRequest } from "./admission.js";
import type { InjectionConfig } from "./agent-sidecar.js";
import { type MutationOutcome, mutatePod } from "./mutate.js";

export interface PodReview {
  readonly answer: AdmissionAnswer;
  readonly outcome: MutationOutcome | "bad_request";
  readonly reason: string;
}

export function reviewPod(request: AdmissionRequest, config: InjectionConfig): PodReview {
  if (request.notAPod !== null)
    return {
      answer: { allowed: false, code: 400, message: request.notAPod },
      outcome: "bad_request",
      reason: request.notAPod,
    };
  // Never in the way of what we do not mutate: a DELETE carries no object, and a subresource
  // (ephemeral containers for kubectl debug, status) is not where the agent goes.
  if (request.operation !== "CREATE" || request.subResource !== "")
    return {
      answer: { allowed: true, patch: [] },
      outcome: "skipped",
      reason: `operation ${request.operation}${request.subResource === "" ? "" : ` on ${request.subResource}`}`,
    };
  if (request.object === null || typeof request.object !== "object") {
    const message = "the CREATE request carries no object";
    return { answer: { allowed: false, code: 400, message }, outcome: "bad_request", reason: message };
  }
  const mutation = mutatePod(request.object, config);
  if (!mutation.allowed)
    return {
      answer: { allowed: false, code: 403, message: `osm-cert: ${mutation.message}` },
      outcome: "refused",
      reason: mutation.message,
    };
  return {
    answer: { allowed: true, patch: mutation.patch },
    outcome: mutation.outcome,
    reason: mutation.reason,
  };
}
