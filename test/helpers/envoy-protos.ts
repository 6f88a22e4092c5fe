// Envoy's canonical protos (shipped by @grpc/grpc-js-xds), for the SDS clients that stand in for
// Envoy (test/helpers/envoy-sds-client.ts, bench/sds-fanout-client.ts): nothing of the agent's, so
// they check the agent against the real contract.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import protobuf from "protobufjs";

const require = createRequire(import.meta.url);
const DEPS = join(dirname(require.resolve("@grpc/grpc-js-xds/package.json")), "deps");
/** Where Envoy's protos and their imports live; protobufjs ships google/protobuf/descriptor.proto. */
export const ENVOY_PROTO_DIRS = [
  ...["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => join(DEPS, d)),
  dirname(require.resolve("protobufjs/package.json")),
];
export const SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/** A protobufjs root with `files` (paths under Envoy's API) and everything they import, field names as in the protos. */
export function loadEnvoyProtoRoot(files: readonly string[]): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    for (const dir of ENVOY_PROTO_DIRS) {
      const candidate = join(dir, target);
      if (existsSync(candidate)) return candidate;
    }
    return target;
  };
  root.loadSync([...files], { keepCase: true });
  return root;
}
