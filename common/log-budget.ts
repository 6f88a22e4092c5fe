// A token bucket for log lines that callers can trigger at will (denials, bad tokens): a burst
// passes, then at most `perSecond` lines a second; what is held back is counted and reported on the
// next line that passes, so nothing disappears silently and no caller can flood the log.

export class LogBudget {
  private tokens: number;
  private updatedAt: number;
  private suppressed = 0;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = burst;
    this.updatedAt = now();
  }

  /** null when this line must be dropped; otherwise how many were dropped since the last one. */
  take(): { suppressedBefore: number } | null {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.updatedAt) / 1000) * this.perSecond);
    this.updatedAt = now;
    if (this.tokens < 1) {
      this.suppressed++;
      return null;
    }
    this.tokens -= 1;
    const suppressedBefore = this.suppressed;
    this.suppressed = 0;
    return { suppressedBefore };
  }
}
