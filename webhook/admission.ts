// admission.k8s.io/v1 AdmissionReview in and out. A body that is not an AdmissionReview we can
// answer (no JSON, another version or kind, no request.uid) gets an HTTP 400: the API server can
// only match a response to its request by uid. Anything else gets an AdmissionReview back, with
// `allowed: false` and a status message when we cannot serve the object.

import type { PatchOperation } from "./json-patch.js";
import { isObject, type JsonObject } from "./osm-pod.js";

export const ADMISSION_API_VERSION = "admission.k8s.io/v1";

export interface AdmissionRequest {
  readonly uid: string;
  readonly operation: string;
  readonly namespace: string;
  readonly name: string;
  readonly dryRun: boolean;
  /** "" for the pod itself; pods/ephemeralcontainers and the like are never mutated here. */
  readonly subResource: string;
  readonly object: unknown;
  /** Why the request is not a Pod we can look at; null when it is. */
  readonly notAPod: string | null;
}

export type ParsedReview = { ok: true; request: AdmissionRequest } | { ok: false; message: string };

// Kubernetes uids are UUIDs, but the API only promises a string; bound it so nothing huge echoes back.
const UID = /^[A-Za-z0-9-]{1,128}$/;

export function parseAdmissionReview(body: string): ParsedReview {
  let review: unknown;
  try {
    review = JSON.parse(body);
  } catch (error) {
    return { ok: false, message: `body is not JSON: ${(error as Error).message}` };
  }
  if (!isObject(review)) return { ok: false, message: "body is not a JSON object" };
  if (review.apiVersion !== ADMISSION_API_VERSION || review.kind !== "AdmissionReview")
    return {
      ok: false,
      message: `expected an ${ADMISSION_API_VERSION} AdmissionReview, got ${describe(review.apiVersion)} ${describe(review.kind)}`,
    };
  const request = review.request;
  if (!isObject(request)) return { ok: false, message: "AdmissionReview has no request" };
  if (typeof request.uid !== "string" || !UID.test(request.uid))
    return { ok: false, message: "AdmissionReview request has no valid uid" };
  return {
    ok: true,
    request: {
      uid: request.uid,
      operation: typeof request.operation === "string" ? request.operation : "",
      namespace: typeof request.namespace === "string" ? request.namespace : "",
      name: typeof request.name === "string" ? request.name : "",
      dryRun: request.dryRun === true,
      subResource: typeof request.subResource === "string" ? request.subResource : "",
      object: request.object,
      notAPod: notAPod(request),
    },
  };
}

function notAPod(request: JsonObject): string | null {
  const kind = isObject(request.kind) ? request.kind : {};
  const resource = isObject(request.resource) ? request.resource : {};
  if (kind.group !== "" || kind.version !== "v1" || kind.kind !== "Pod")
    return `this webhook serves v1 Pods, got kind ${describe(kind.group)}/${describe(kind.version)} ${describe(kind.kind)}`;
  if (resource.resource !== "pods")
    return `this webhook serves pods, got resource ${describe(resource.resource)}`;
  return null;
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.slice(0, 64));
  return value === undefined ? "nothing" : typeof value;
}

export type AdmissionAnswer =
  | { readonly allowed: true; readonly patch: readonly PatchOperation[] }
  | { readonly allowed: false; readonly code: number; readonly message: string };

export function admissionResponse(uid: string, answer: AdmissionAnswer): JsonObject {
  const response: JsonObject = { uid, allowed: answer.allowed };
  if (answer.allowed && answer.patch.length > 0) {
    response.patchType = "JSONPatch";
    response.patch = Buffer.from(JSON.stringify(answer.patch)).toString("base64");
  }
  if (!answer.allowed) {
    response.status = {
      code: answer.code,
      message: answer.message,
      reason: answer.code === 400 ? "BadRequest" : "Forbidden",
    };
  }
  return { apiVersion: ADMISSION_API_VERSION, kind: "AdmissionReview", response };
}
