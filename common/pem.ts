// PEM armour, shared by every reader and writer of certificates, CSRs and keys.

export class PemError extends Error {
  readonly code = "ERR_OSM_CERT_PEM";
}

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]*?)-----END \1-----/g;

export interface PemBlock {
  readonly label: string;
  readonly der: Buffer;
}

export function encodePem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  let body = "";
  for (let i = 0; i < b64.length; i += 64) body += `${b64.slice(i, i + 64)}\n`;
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

/** Every PEM block in the text, in order. Text outside blocks is ignored, as OpenSSL does. */
export function decodePemBlocks(text: string): PemBlock[] {
  const blocks: PemBlock[] = [];
  for (const match of text.matchAll(BLOCK)) {
    const der = Buffer.from((match[2] as string).replace(/\s+/g, ""), "base64");
    blocks.push({ label: match[1] as string, der });
  }
  return blocks;
}

/** Exactly one block with the given label (other labels are an error, not silently skipped). */
export function decodeSinglePem(text: string, label: string): Buffer {
  const blocks = decodePemBlocks(text);
  if (blocks.length === 0) throw new PemError(`not PEM: no "-----BEGIN ${label}-----" block found`);
  if (blocks.length > 1) throw new PemError(`expected one PEM block, found ${blocks.length}`);
  const block = blocks[0] as PemBlock;
  if (block.label !== label) throw new PemError(`expected a PEM "${label}" block, found "${block.label}"`);
  if (block.der.length === 0) throw new PemError(`PEM "${label}" block is empty`);
  return block.der;
}

/** All CERTIFICATE blocks of a bundle or chain, as DER. */
export function decodeCertificates(text: string): Buffer[] {
  const blocks = decodePemBlocks(text);
  const other = blocks.find((b) => b.label !== "CERTIFICATE");
  if (other) throw new PemError(`expected only CERTIFICATE blocks, found "${other.label}"`);
  return blocks.map((b) => b.der);
}
