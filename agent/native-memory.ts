// Gives back the native memory of the connections the agent has let go (issue 12, figure 4).
//
// Every installed identity gets a TLS connection of its own (signer-client.ts). When the old one
// closes, most of what it held is native: OpenSSL's SSL_CTX (≈ 80 KB each on OpenSSL 3.0), the
// socket, the HTTP/2 session and their buffers. Node frees them only when V8 collects the JS
// objects that own them, and V8 neither sees that memory nor feels pressure from the agent's small
// JS heap, so a major collection can be hundreds of rotations away: measured with 100 SDS streams,
// 100 rotations took the RSS from 65 to 92 MB, inside a 96Mi container limit (README, figure 4).
// One full collection a little after each identity change (once per certificate lifetime in
// production) brings that back to ≈ 73 MB. It needs V8's `gc`, which the injected container
// exposes (--expose-gc in common/agent-node-options.ts); without it V8 collects on its own schedule,
// as before.

/** Time for the old connection to close: calls in flight finish, the trust-bundle stream moves. */
export const COLLECT_AFTER_MS = 2_000;

type Gc = () => void;

/** V8's `gc` when the process runs with --expose-gc, else null. */
export function exposedGc(): Gc | null {
  const gc = (globalThis as { gc?: unknown }).gc;
  return typeof gc === "function" ? (gc as Gc) : null;
}

/**
 * Collects once, `delayMs` after the first of any burst of `connectionReleased()` calls, so a
 * storm of identity changes costs one collection per `delayMs`, not one each.
 */
export class ReleasedConnectionCollector {
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly gc: Gc | null,
    private readonly delayMs = COLLECT_AFTER_MS,
  ) {}

  connectionReleased(): void {
    if (this.gc === null || this.timer !== null) return;
    const gc = this.gc;
    this.timer = setTimeout(() => {
      this.timer = null;
      gc();
    }, this.delayMs);
    // Never what keeps the agent alive at shutdown.
    this.timer.unref();
  }

  close(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
