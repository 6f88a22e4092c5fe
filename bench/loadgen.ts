// The load generator of bench/run.ts, in a process of its own so that its CPU is not the server's
// (and is reported apart). It speaks gRPC over node:http2 directly (one HTTP/2 stream per call,
// the request encoded once up front): grpc-js on the client side would cost more CPU than the
// server's own gRPC layer on a 2-core machine. Every call is checked: HTTP 200 and grpc-status 0.
//
//   node dist/bench/loadgen.js CONFIG.json      (prints JSON lines: window-start, result)
//
// modes
//   pooled  `connections` TLS connections, `inflight` calls on each at all times, for `seconds`
//           after `warmupSeconds`; one client certificate (a renewing agent's shape)
//   storm   every identity on a new TLS connection of its own with its own credential (bootstrap
//           certificate or bearer token), at most `window` connections open at once; a call that
//           ends RESOURCE_EXHAUSTED or UNAVAILABLE is retried on a new connection after its
//           grpc-retry-pushback-ms (as the agent does), at most 5 times
//   cfssl   POST /api/v1/cfssl/sign to `cfssl serve` over HTTPS keep-alive connections (the
//           reference), `connections` × `inflight` as in pooled

import { readFileSync } from "node:fs";
import { type ClientHttp2Session, connect } from "node:http2";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { performance } from "node:perf_hooks";
import { certificateServiceDefinition, msToDuration } from "../proto/signing-api.js";

interface Credential {
  readonly certPem?: string;
  readonly keyPem?: string;
  readonly token?: string;
}

export interface PooledConfig {
  readonly mode: "pooled" | "cfssl";
  readonly address: string;
  readonly caPem: string;
  readonly client: Credential;
  readonly csrs: readonly string[];
  readonly connections: number;
  readonly inflight: number;
  readonly seconds: number;
  readonly warmupSeconds: number;
  /** cfssl: the names to put in the certificate. */
  readonly hosts?: readonly string[];
}

export interface StormConfig {
  readonly mode: "storm";
  readonly address: string;
  readonly caPem: string;
  readonly identities: readonly (Credential & { readonly csr: string })[];
  readonly window: number;
}

export interface LoadResult {
  readonly ok: number;
  readonly errors: number;
  readonly retries: number;
  readonly errorSamples: string[];
  readonly wallSeconds: number;
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number };
  /** This process's CPU seconds (user + system) over the window. */
  readonly cpuSeconds: number;
}

const PATH = "/osm.cert.v1.CertificateService/CreateCertificate";
const RETRIES = 5;

function encodeRequest(csr: string): Buffer {
  const method = certificateServiceDefinition().CreateCertificate;
  if (method === undefined) throw new Error("no CreateCertificate in the service definition");
  const body = method.requestSerialize({ csr, validity: msToDuration(3_600_000) }) as Buffer;
  const framed = Buffer.alloc(5 + body.length);
  framed.writeUInt32BE(body.length, 1);
  body.copy(framed, 5);
  return framed;
}

function session(
  address: string,
  caPem: string,
  credential: Credential,
  localAddress?: string,
): ClientHttp2Session {
  return connect(`https://${address}`, {
    ca: caPem,
    ...(localAddress === undefined ? {} : { localAddress }),
    ...(credential.certPem === undefined ? {} : { cert: credential.certPem, key: credential.keyPem }),
    servername: "localhost",
  });
}

interface CallOutcome {
  readonly status: number;
  readonly message: string;
  readonly pushbackMs: number;
}

function call(s: ClientHttp2Session, framed: Buffer, token: string | undefined): Promise<CallOutcome> {
  return new Promise((resolve) => {
    const headers: Record<string, string> = {
      ":method": "POST",
      ":path": PATH,
      "content-type": "application/grpc",
      te: "trailers",
    };
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    let req: ReturnType<ClientHttp2Session["request"]>;
    try {
      req = s.request(headers);
    } catch (error) {
      resolve({ status: -1, message: (error as Error).message, pushbackMs: 0 });
      return;
    }
    let status: number | undefined;
    let message = "";
    let pushbackMs = 0;
    const read = (h: Record<string, unknown>) => {
      if (h["grpc-status"] !== undefined) status = Number(h["grpc-status"]);
      if (h["grpc-message"] !== undefined) message = decodeURIComponent(String(h["grpc-message"]));
      if (h["grpc-retry-pushback-ms"] !== undefined) pushbackMs = Number(h["grpc-retry-pushback-ms"]);
    };
    req.on("response", read);
    req.on("trailers", read);
    req.on("data", () => {});
    req.on("error", (error) => resolve({ status: -1, message: error.message, pushbackMs: 0 }));
    req.on("close", () => resolve({ status: status ?? -1, message, pushbackMs }));
    req.end(framed);
  });
}

function percentile(sorted: readonly number[], q: number): number {
  return sorted.length === 0
    ? Number.NaN
    : (sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number);
}

function cpuSince(start: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
}

function emit(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** Keeps `connections × inflight` calls going; counts those that ended inside the window. */
async function pooled(config: PooledConfig, send: (i: number, connection: number) => Promise<CallOutcome>) {
  const latencies: number[] = [];
  let ok = 0;
  let errors = 0;
  const errorSamples: string[] = [];
  const start = performance.now();
  const windowStart = start + config.warmupSeconds * 1000;
  const end = windowStart + config.seconds * 1000;
  let started = false;
  let cpu = process.cpuUsage();
  const markStart = setTimeout(() => {
    started = true;
    cpu = process.cpuUsage();
    emit({ event: "window-start" });
  }, config.warmupSeconds * 1000);
  let next = 0;
  await Promise.all(
    Array.from({ length: config.connections * config.inflight }, async (_, lane) => {
      const connection = lane % config.connections;
      while (performance.now() < end) {
        const t0 = performance.now();
        const outcome = await send(next++, connection);
        const t1 = performance.now();
        if (!started || t1 > end) continue;
        if (outcome.status === 0) {
          ok++;
          latencies.push(t1 - t0);
        } else {
          errors++;
          if (errorSamples.length < 5) errorSamples.push(`${outcome.status} ${outcome.message}`);
        }
      }
    }),
  );
  clearTimeout(markStart);
  latencies.sort((a, b) => a - b);
  const result: LoadResult = {
    ok,
    errors,
    retries: 0,
    errorSamples,
    wallSeconds: config.seconds,
    latencyMs: {
      p50: percentile(latencies, 0.5),
      p99: percentile(latencies, 0.99),
      max: latencies.at(-1) ?? 0,
    },
    cpuSeconds: cpuSince(cpu),
  };
  return result;
}

async function runPooled(config: PooledConfig): Promise<LoadResult> {
  const framed = config.csrs.map(encodeRequest);
  const sessions = Array.from({ length: config.connections }, () =>
    session(config.address, config.caPem, config.client),
  );
  try {
    return await pooled(config, (i, c) =>
      call(sessions[c] as ClientHttp2Session, framed[i % framed.length] as Buffer, config.client.token),
    );
  } finally {
    for (const s of sessions) s.close();
  }
}

async function runCfssl(config: PooledConfig): Promise<LoadResult> {
  const [host, port] = config.address.split(":") as [string, string];
  const agent = new HttpsAgent({
    keepAlive: true,
    maxSockets: config.connections,
    ca: config.caPem,
    cert: config.client.certPem,
    key: config.client.keyPem,
    servername: "localhost",
  });
  const bodies = config.csrs.map((csr) =>
    JSON.stringify({ certificate_request: csr, hosts: config.hosts ?? [] }),
  );
  try {
    return await pooled(
      config,
      (i) =>
        new Promise<CallOutcome>((resolve) => {
          const body = bodies[i % bodies.length] as string;
          const req = httpsRequest(
            {
              agent,
              host,
              port: Number(port),
              method: "POST",
              path: "/api/v1/cfssl/sign",
              headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
            },
            (res) => {
              let text = "";
              res.setEncoding("utf8");
              res.on("data", (chunk: string) => {
                text += chunk;
              });
              res.on("end", () => {
                const good =
                  res.statusCode === 200 &&
                  text.includes('"success":true') &&
                  text.includes("BEGIN CERTIFICATE");
                resolve({
                  status: good ? 0 : (res.statusCode ?? -1),
                  message: good ? "" : text.slice(0, 200),
                  pushbackMs: 0,
                });
              });
            },
          );
          req.on("error", (error) => resolve({ status: -1, message: error.message, pushbackMs: 0 }));
          req.end(body);
        }),
    );
  } finally {
    agent.destroy();
  }
}

async function runStorm(config: StormConfig): Promise<LoadResult> {
  const framed = config.identities.map((identity) => encodeRequest(identity.csr));
  const latencies: number[] = [];
  let ok = 0;
  let errors = 0;
  let retries = 0;
  const errorSamples: string[] = [];
  emit({ event: "window-start" });
  const cpu = process.cpuUsage();
  const start = performance.now();
  let next = 0;
  const one = async (i: number): Promise<void> => {
    const identity = config.identities[i] as (typeof config.identities)[number];
    const t0 = performance.now();
    for (let attempt = 0; ; attempt++) {
      // Each pod its own source address, as in a cluster (the server budgets token reviews per address).
      const s = session(
        config.address,
        config.caPem,
        identity,
        `127.${1 + Math.floor(i / 62_500)}.${Math.floor(i / 250) % 250}.${(i % 250) + 1}`,
      );
      s.on("error", () => {});
      const outcome = await call(s, framed[i] as Buffer, identity.token);
      s.close();
      if (outcome.status === 0) {
        ok++;
        latencies.push(performance.now() - t0);
        return;
      }
      // gRPC RESOURCE_EXHAUSTED (8) and UNAVAILABLE (14) are the documented retryable answers.
      if ((outcome.status === 8 || outcome.status === 14) && attempt < RETRIES) {
        retries++;
        await new Promise((r) => setTimeout(r, outcome.pushbackMs || 200 * 2 ** attempt));
        continue;
      }
      errors++;
      if (errorSamples.length < 5) errorSamples.push(`${outcome.status} ${outcome.message}`);
      return;
    }
  };
  await Promise.all(
    Array.from({ length: Math.min(config.window, config.identities.length) }, async () => {
      while (next < config.identities.length) await one(next++);
    }),
  );
  const wallSeconds = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    ok,
    errors,
    retries,
    errorSamples,
    wallSeconds,
    latencyMs: {
      p50: percentile(latencies, 0.5),
      p99: percentile(latencies, 0.99),
      max: latencies.at(-1) ?? 0,
    },
    cpuSeconds: cpuSince(cpu),
  };
}

const configPath = process.argv[2];
if (configPath === undefined) {
  process.stderr.write("usage: loadgen CONFIG.json\n");
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, "utf8")) as PooledConfig | StormConfig;
const result =
  config.mode === "storm"
    ? await runStorm(config)
    : config.mode === "cfssl"
      ? await runCfssl(config)
      : await runPooled(config);
emit({ event: "result", ...result });
