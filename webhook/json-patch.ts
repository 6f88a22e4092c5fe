// RFC 6902 JSON Patch, only what an admission webhook sends: `add` operations with RFC 6901
// pointers. Keys with `/` or `~` (annotation and label keys) must be escaped or the API server
// patches the wrong path.

export interface AddOperation {
  readonly op: "add";
  readonly path: string;
  readonly value: unknown;
}

export type PatchOperation = AddOperation;

/** `pointer("metadata", "annotations", "a/b")` → `/metadata/annotations/a~1b`. */
export function pointer(...segments: readonly (string | number)[]): string {
  return segments.map((s) => `/${String(s).replace(/~/g, "~0").replace(/\//g, "~1")}`).join("");
}

/**
 * Appends `value` to the array at `path`, creating the array when the pod has none: `add …/-` on
 * a missing array is an error in RFC 6902, and `add` of a whole array over an existing one would
 * drop its entries.
 */
export function appendTo(
  path: readonly (string | number)[],
  exists: boolean,
  values: readonly unknown[],
): PatchOperation[] {
  if (values.length === 0) return [];
  if (!exists) return [{ op: "add", path: pointer(...path), value: [...values] }];
  return values.map((value) => ({ op: "add", path: pointer(...path, "-"), value }));
}
