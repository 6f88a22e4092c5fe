# syntax=docker/dockerfile:1
# The osm-cert image: one image for every command (server, agent, webhook, envoy-bootstrap, issue),
# ENTRYPOINT `osm-cert`, so a pod spec says only `args: [agent, ...]` (CONTRACT.md).
#
# Both stages run the same Node release: the agent starts from one bundled file plus V8's code cache
# (dist/agent.bundle.cjs.cache), which only the V8 that made it accepts; any other Node would still
# run the agent, just without the faster start-up (DESIGN.md §12). The build and the tests here use
# Node 20.20.2.
ARG NODE_VERSION=20.20.2

FROM node:${NODE_VERSION}-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` would run the build before the sources are here; it runs below.
RUN npm ci --ignore-scripts
COPY tsconfig.json ./
COPY agent ./agent
COPY cli ./cli
COPY common ./common
COPY proto ./proto
COPY scripts ./scripts
COPY server ./server
COPY webhook ./webhook
# Then only what `dependencies` need stays in node_modules. Source maps go: the image carries no
# sources for them to point at.
RUN npm run build \
 && npm prune --omit=dev \
 && find dist -name '*.map' -delete

FROM node:${NODE_VERSION}-bookworm-slim AS runtime
LABEL org.opencontainers.image.title="osm-cert" \
      org.opencontainers.image.description="Per-pod mTLS identity for Open Service Mesh: signing server, SDS agent, injection webhook" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /app
# Owned by root and read-only to the process: nothing in the image is the process's to change.
# package.json is needed at run time: it makes dist/ ES modules ("type": "module").
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/agent ./dist/agent
COPY --from=build /src/dist/cli ./dist/cli
COPY --from=build /src/dist/common ./dist/common
COPY --from=build /src/dist/proto ./dist/proto
COPY --from=build /src/dist/server ./dist/server
COPY --from=build /src/dist/webhook ./dist/webhook
# The bundle's licence notices travel with it.
COPY --from=build /src/dist/agent.bundle.cjs /src/dist/agent.bundle.cjs.cache /src/dist/agent.bundle.cjs.LEGAL.txt ./dist/
# The image's `node` user, by number: Kubernetes' runAsNonRoot can only verify a numeric USER. The
# chart and the webhook set their own runAsUser (the agent runs as Envoy's UID 1500).
USER 1000:1000
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["--help"]
