// Property tests of the admission webhook (issue 10, Deliver 2d): the real webhook over real HTTPS
// is sent arbitrary JSON, AdmissionReviews with arbitrary objects, and OSM pods with fields deleted
// or replaced by arbitrary values at random places. Every request ends with a defined HTTP status;
// a 200 carries an AdmissionReview answering the request's uid; an allowed answer's patch applies
// to the pod (fast-json-patch, validating) and, applied, leaves nothing more to inject.

import assert from "node:assert/strict";
import { Agent, request } from "node:https";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import fc from "fast-check";
import jsonpatch from "fast-json-patch";
import { createLogger } from "../../common/logger.js";
import type { RunningWebhook } from "../../webhook/main.js";
import { admissionReview, type Json, osmInjectedPod } from "../helpers/osm-pods.js";
import { openTestCa, tempDir } from "../helpers/pki.js";
import {
  forbidUnhandledRejections,
  heapUsedMb,
  propertyRuns,
  propertySeed,
  SOAK,
} from "../helpers/property.js";
import { startWebhookWithCaDir } from "../helpers/webhook.js";

const RUNS = propertyRuns(150);
const SERVICE_DNS = "osm-cert-webhook.osm-system.svc";
/** Statuses the webhook documents for requests it cannot read (bad JSON, not an AdmissionReview). */
const REFUSALS = new Set([400, 413]);

forbidUnhandledRejections();

let dir: Awaited<ReturnType<typeof tempDir>>;
let rootPem: string;
let webhook: RunningWebhook;
let agent: Agent;
const stop = new AbortController();

before(async () => {
  dir = await tempDir();
  const ca = await openTestCa(dir.path);
  rootPem = ca.trustBundle().roots.join("");
  const sink = new Writable({ write: (_c, _e, done) => done() });
  webhook = await startWebhookWithCaDir(
    dir.path,
    createLogger("webhook-property", { level: "warn", destination: sink }),
    stop.signal,
  );
  agent = new Agent({ keepAlive: true, maxSockets: 1, ca: rootPem, servername: SERVICE_DNS });
});

after(async () => {
  agent?.destroy();
  stop.abort();
  await webhook?.close();
  await dir?.remove();
});

function post(body: string): Promise<{ status: number; body: string }> {
  const at = webhook.address.lastIndexOf(":");
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: webhook.address.slice(0, at),
        port: Number(webhook.address.slice(at + 1)),
        method: "POST",
        path: "/mutate-pod-v1?timeout=10s",
        agent,
        headers: { "content-type": "application/json" },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

interface Answer {
  uid: unknown;
  allowed: unknown;
  patchType?: string;
  patch?: string;
  status?: { code: number; message: string };
}

/** Sends a body; checks the status is defined and, for a 200, the AdmissionReview's shape. */
async function admit(body: string, uid?: unknown): Promise<Answer | null> {
  const answer = await post(body);
  if (answer.status !== 200) {
    assert.ok(REFUSALS.has(answer.status), `HTTP ${answer.status}: ${answer.body}`);
    return null;
  }
  const review = JSON.parse(answer.body) as { apiVersion: string; kind: string; response: Answer };
  assert.equal(review.apiVersion, "admission.k8s.io/v1");
  assert.equal(review.kind, "AdmissionReview");
  if (uid !== undefined) assert.equal(review.response.uid, uid);
  assert.equal(typeof review.response.allowed, "boolean");
  if (review.response.allowed === false) {
    assert.ok(
      review.response.status !== undefined && [400, 403].includes(review.response.status.code),
      answer.body,
    );
    assert.equal(review.response.patch, undefined);
  }
  return review.response;
}

/** The patch of an allowed answer, applied to `pod` with fast-json-patch's validation on. */
function applied(answer: Answer, pod: Json): Json | null {
  if (answer.allowed !== true || answer.patch === undefined) return null;
  assert.equal(answer.patchType, "JSONPatch");
  const patch = JSON.parse(Buffer.from(answer.patch, "base64").toString()) as jsonpatch.Operation[];
  return jsonpatch.applyPatch(structuredClone(pod), patch, true, false).newDocument as Json;
}

type Path = (string | number)[];
/** Places in an OSM pod where a real API server object may hold something unexpected. */
const PATHS: Path[] = [
  ["metadata"],
  ["metadata", "namespace"],
  ["metadata", "labels"],
  ["metadata", "annotations"],
  ["metadata", "annotations", "openservicemesh.io/sidecar-injection"],
  ["spec"],
  ["spec", "serviceAccountName"],
  ["spec", "volumes"],
  ["spec", "volumes", 0],
  ["spec", "initContainers"],
  ["spec", "initContainers", 0],
  ["spec", "initContainers", 0, "name"],
  ["spec", "containers"],
  ["spec", "containers", 0],
  ["spec", "containers", 0, "name"],
  ["spec", "containers", 0, "volumeMounts"],
  ["spec", "containers", 0, "securityContext"],
  ["spec", "containers", 1],
  ["spec", "containers", 1, "args"],
  ["spec", "containers", 1, "env"],
  ["spec", "securityContext"],
];

type Edit = { path: Path; value: unknown; remove: boolean };

function edited(pod: Json, edits: Edit[]): Json {
  const out = structuredClone(pod);
  for (const { path, value, remove } of edits) {
    let at: Record<string | number, unknown> = out;
    for (const key of path.slice(0, -1)) {
      const next = at[key];
      if (next === null || typeof next !== "object") break;
      at = next as Record<string | number, unknown>;
    }
    const last = path.at(-1) as string | number;
    if (remove) delete at[last];
    // A copy: fast-check hands the same value to several cases, and later edits write into it.
    else at[last] = structuredClone(value);
  }
  return out;
}

const editArb: fc.Arbitrary<Edit> = fc.record({
  path: fc.constantFrom(...PATHS),
  value: fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    fc.constant(null),
    fc.string(),
    fc.constant([]),
    fc.constant({}),
  ),
  remove: fc.boolean(),
});

test("arbitrary JSON bodies get a defined status", async () => {
  const heap0 = SOAK ? heapUsedMb() : 0;
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.json({ maxDepth: 4 }),
        fc.string({ maxLength: 200 }),
        fc
          .jsonValue()
          .map((v) =>
            JSON.stringify({ kind: "AdmissionReview", apiVersion: "admission.k8s.io/v1", request: v }),
          ),
      ),
      async (body) => {
        await admit(body);
      },
    ),
    { numRuns: RUNS, ...propertySeed() },
  );
  if (SOAK) console.log(`webhook arbitrary JSON: heapUsed ${heap0} -> ${heapUsedMb()} MB over ${RUNS} cases`);
});

test("OSM pods with arbitrary edits: a defined answer; an allowed patch applies and leaves nothing to inject", async () => {
  const heap0 = SOAK ? heapUsedMb() : 0;
  let injected = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(editArb, { maxLength: 4 }),
      fc.jsonValue({ maxDepth: 2 }),
      async (edits, uid) => {
        const pod = edited(osmInjectedPod(), edits);
        // A uid of any JSON type: only a string is an AdmissionReview; others must be refused.
        const review = admissionReview(pod, typeof uid === "string" && uid !== "" ? { uid } : {});
        const answer = await admit(JSON.stringify(review), (review.request as Json).uid);
        if (answer === null) return;
        const patched = applied(answer, pod);
        if (patched === null) return;
        injected++;
        const again = await admit(JSON.stringify(admissionReview(patched)));
        assert.ok(
          again !== null && again.allowed === true && again.patch === undefined,
          "a patched pod gets no further patch",
        );
      },
    ),
    { numRuns: RUNS, ...propertySeed() },
  );
  assert.ok(injected > 0, "some edited pods were still injected");
  if (SOAK)
    console.log(
      `webhook edited pods: heapUsed ${heap0} -> ${heapUsedMb()} MB over ${RUNS} cases (${injected} injected)`,
    );
});
