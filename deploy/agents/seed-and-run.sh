#!/bin/sh
# Entrypoint of the simulated agents in compose.yaml: on the first start, the
# simulated host boots the release in /etc/upshift/simulated-os.seed.json
# (copied into the state volume); afterwards the volume keeps what the agent
# installed across its simulated reboots (container restarts).
set -eu
state=/var/lib/upshift/simulated-os.json
if [ ! -e "$state" ]; then
    cp /etc/upshift/simulated-os.seed.json "$state"
fi
exec "$@"
