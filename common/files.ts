// Writing files that hold secrets or that others trust: a new file is created with its final mode
// (never widened later by an existing file's mode), filled under a temporary name and renamed into
// place, so a reader never sees half a file; a symbolic link at the target is refused rather than
// followed, so nobody can point our write at a file of their choosing.

import { randomBytes } from "node:crypto";
import { lstat, rename, unlink, writeFile } from "node:fs/promises";

export class UnsafePathError extends Error {
  readonly code = "ERR_OSM_CERT_UNSAFE_PATH";
}

export async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const existing = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return null;
    throw error;
  });
  if (existing?.isSymbolicLink()) {
    throw new UnsafePathError(`${path} is a symbolic link; refusing to write through it`);
  }
  if (existing !== null && !existing.isFile()) {
    throw new UnsafePathError(`${path} exists and is not a regular file`);
  }
  const temp = `${path}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    await writeFile(temp, data, { mode, flag: "wx" });
    await rename(temp, path);
  } catch (error) {
    // A full disk leaves a partial temporary file: never leave it behind. The target is untouched.
    await unlink(temp).catch(() => {});
    throw error;
  }
}
