// Go-syntax durations ("1h", "30m", "1.5h", "1h30m", "500ms"), as OSM's flags use everywhere.

const UNIT_MS: Readonly<Record<string, number>> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
};

const TERM = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/y;

export class DurationError extends Error {
  readonly code = "ERR_OSM_CERT_DURATION";
}

/** Parses a Go duration into milliseconds. Negative durations are refused: no flag of ours wants one. */
export function parseDuration(text: string): number {
  const input = text.trim();
  if (input === "0") return 0;
  if (input === "") throw new DurationError('invalid duration "": empty');
  if (input.startsWith("-")) throw new DurationError(`invalid duration "${text}": must not be negative`);
  const body = input.startsWith("+") ? input.slice(1) : input;
  let total = 0;
  TERM.lastIndex = 0;
  while (TERM.lastIndex < body.length) {
    const at = TERM.lastIndex;
    const match = TERM.exec(body);
    if (match === null || match.index !== at) {
      throw new DurationError(
        `invalid duration "${text}": expected a number and a unit (ns, us, ms, s, m, h), e.g. 24h or 1h30m`,
      );
    }
    total += Number(match[1]) * (UNIT_MS[match[2] as string] as number);
  }
  if (!Number.isFinite(total)) throw new DurationError(`invalid duration "${text}": too large`);
  return total;
}

/** Formats milliseconds the way Go's time.Duration.String() does ("1h30m0s", "1.5s", "0s"). */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  const sign = ms < 0 ? "-" : "";
  let rest = Math.abs(ms);
  if (rest < 1000) return `${sign}${trimNumber(rest)}ms`;
  const hours = Math.floor(rest / 3_600_000);
  rest -= hours * 3_600_000;
  const minutes = Math.floor(rest / 60_000);
  rest -= minutes * 60_000;
  const seconds = trimNumber(rest / 1000);
  if (hours > 0) return `${sign}${hours}h${minutes}m${seconds}s`;
  if (minutes > 0) return `${sign}${minutes}m${seconds}s`;
  return `${sign}${seconds}s`;
}

function trimNumber(value: number): string {
  return String(Number(value.toFixed(3)));
}
