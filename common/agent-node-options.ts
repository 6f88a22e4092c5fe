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

export const AGENT_NODE_OPTIONS = "--max-semi-space-size=1 --expose-gc";
