# One image for the Muster server and the Muster agent.
#
#   docker build -t muster .
#   docker run --rm -p 127.0.0.1:7070:7070 -p 7071:7071 muster                  # server (embedded database)
#   docker run --rm -e MUSTER_URL=host:7071 -e MUSTER_TOKEN=... muster node agent/main.ts   # agent
#
# There is no build step: Node 24 runs the TypeScript sources directly (type
# stripping), and gen/ is committed. So the image needs only the production
# dependencies; the `node` dev dependency that pins Node 24 for npm scripts is
# left out because the base image already is Node 24, which runs the entry
# points directly (`node src/main.ts`, not `npm start`).
FROM node:24-slim

# bash runs job scripts (on agents and on the server's built-in worker);
# ca-certificates for scripts that call HTTPS APIs; tini as PID 1 forwards
# SIGTERM to Node and reaps the orphans that scripts leave behind.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force

# agent/config.ts reads package.json (the agent version), so it stays in the image.
COPY proto ./proto
COPY gen ./gen
COPY src ./src
COPY agent ./agent

# Writable places for the non-root user. Named volumes mounted here start
# with this ownership.
#   /var/lib/muster        server: embedded database (when no MUSTER_DATABASE_URL)
#                          and the built-in worker's job directories
#   /var/lib/muster-agent  agent: worker credential (worker.json) and job directories
RUN mkdir -p /var/lib/muster /var/lib/muster-agent \
 && chown node:node /var/lib/muster /var/lib/muster-agent \
 && chmod 0700 /var/lib/muster-agent

ENV MUSTER_API_ADDR=0.0.0.0:7070 \
    MUSTER_AGENT_ADDR=0.0.0.0:7071 \
    MUSTER_DATA_DIR=/var/lib/muster \
    MUSTER_STATE_DIR=/var/lib/muster-agent

USER node

# 7070: API plane (gRPC, gRPC-Web, Connect, /healthz /readyz /metrics). It has no
# authentication: publish it only where trusted clients reach it.
# 7071: agent plane (agents dial in; registration tokens and worker credentials).
EXPOSE 7070 7071

ENTRYPOINT ["/usr/bin/tini", "--"]
# --max-semi-space-size: see "Memory" in README.md.
CMD ["node", "--max-semi-space-size=32", "src/main.ts"]
