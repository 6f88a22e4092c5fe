// Notices when the event loop stalls. A process whose loop is stuck cannot answer /healthz at all
// (the kubelet's probe then times out and restarts it); one that stalls for long stretches and
// then recovers answers again, too late to have rotated a certificate or served Envoy. Both must
// look unhealthy, so /healthz reports a recent stall for a while after it ended.

const TICK_MS = 500;
/** How long a stall keeps /healthz failing after the loop recovered. */
const REMEMBER_MS = 60_000;

export interface LoopStall {
  readonly endedAt: number;
  readonly durationMs: number;
}

export class LoopStallMonitor {
  private timer: NodeJS.Timeout | undefined;
  private expected = 0;
  private last: LoopStall | null = null;

  constructor(private readonly thresholdMs: number) {}

  start(): void {
    if (this.timer !== undefined) return;
    this.expected = Date.now() + TICK_MS;
    this.timer = setInterval(() => {
      const now = Date.now();
      const late = now - this.expected;
      if (late >= this.thresholdMs) this.last = { endedAt: now, durationMs: late + TICK_MS };
      this.expected = now + TICK_MS;
    }, TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The last stall at or above the threshold, while it is recent enough to matter. */
  recentStall(now = Date.now()): LoopStall | null {
    return this.last !== null && now - this.last.endedAt < REMEMBER_MS ? this.last : null;
  }
}
