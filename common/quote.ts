// Quoting text that came from a caller (a CSR's CN, a SAN, a resource name) into an error message or
// a log line: at most a short prefix, every non-printable or non-ASCII character escaped, so what an
// attacker chooses can neither bloat a gRPC status past its metadata limit nor forge log lines.

const DEFAULT_MAX_CHARS = 48;

export function quote(value: string, maxChars = DEFAULT_MAX_CHARS): string {
  const chars = Array.from(value);
  const head = chars.slice(0, maxChars).join("");
  // JSON.stringify escapes quotes, backslashes and control characters; the rest is escaped here.
  const escaped = JSON.stringify(head).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
  return chars.length > maxChars ? `${escaped}…(+${chars.length - maxChars} more characters)` : escaped;
}

/** At most `maxChars` characters of `value`, marked when cut: for structured log fields (JSON escapes the rest). */
export function shorten(value: string, maxChars = DEFAULT_MAX_CHARS): string {
  const chars = Array.from(value);
  return chars.length > maxChars ? `${chars.slice(0, maxChars).join("")}…` : value;
}
