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
  if (request.operation !== "CREATE")
    return {
      answer: { allowed: true, patch: [] },
      outcome: "skipped",
      reason: `operation ${request.operation}`,
    };
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
