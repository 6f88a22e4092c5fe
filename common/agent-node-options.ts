// The environment the injected agent runs with: its V8 flags, and glibc malloc's settings.
//
// The V8 flags the injected agent runs with (NODE_OPTIONS in the container the webhook adds,
// webhook/agent-sidecar.ts). One place, because three things must agree: the container, the build
// that makes the agent bundle's V8 code cache (scripts/bundle-agent.mjs: V8 rejects a cache made
// under other flags, and --max-semi-space-size is one of the flags it checks), and the benchmark
// that measures the agent as the chart runs it (bench/agent-figures.ts).
//
// --max-semi-space-size=1: V8's young generation grows to 16 MB per semi-space by default; the
// agent allocates little and keeps less, so a 1 MB semi-space costs it a few more scavenges (each
// well under a millisecond) and saves ≈15 MB of RSS (README, Benchmarks).
//
// --expose-gc: lets the agent run one full collection after it lets a TLS connection go (one per
// certificate it installs), which is when that connection's native memory is freed
// (agent/native-memory.ts); V8 would otherwise leave it for hundreds of rotations.
//
// Not --jitless (the one compiler flag Node takes in NODE_OPTIONS): without TurboFan the agent holds
// ≈ 9 MB less, but its own writing of a rotation to 1,000 SDS streams takes twice as long (figure 6),
// and V8 warns on stderr at every start. The agent turns off only Sparkplug, at run time
// (agent/v8-tiers.ts), which the code cache made under these flags does not see.

export const AGENT_NODE_OPTIONS = "--max-semi-space-size=1 --expose-gc";

// glibc malloc (the image is Debian bookworm): setting the mmap and trim thresholds explicitly, even
// to their initial 128 KiB, turns off glibc's dynamic threshold, which after the first large free
// raises the mmap threshold (up to 32 MiB) so that later large buffers (TLS records, HTTP/2 frames,
// OpenSSL contexts of the connection per identity) land in the heap, where freeing them rarely gives
// pages back. Kept at 128 KiB, those allocations are mapped and unmapped, and the heap's top is
// trimmed past 128 KiB. Measured with 100 SDS streams after 100 rotations: 74.7 -> 68.4 MB (README).
export const AGENT_MALLOC_ENV: Readonly<Record<string, string>> = {
  MALLOC_MMAP_THRESHOLD_: "131072",
  MALLOC_TRIM_THRESHOLD_: "131072",
};

/**
 * The variables the injected container sets for the agent (webhook/agent-sidecar.ts), besides the
 * pod's own fields; the benchmark runs the agent under exactly these (bench/agent-figures.ts).
 */
export const AGENT_ENV: Readonly<Record<string, string>> = {
  NODE_OPTIONS: AGENT_NODE_OPTIONS,
  ...AGENT_MALLOC_ENV,
};
