#!/usr/bin/env bash
# `make bench`: `jetplug-bench` (release build) against a dedicated
# nats-server, a 3-node JetStream cluster and PostgreSQL started on free
# ports under .local/bench by `jetplug-servers` (the tests' launchers),
# stopped afterwards. Extra arguments go to `jetplug-bench`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.local/venv/bin:$PATH"

# nats-py for the Python consumer beside jetplug (pinned; into .local/venv).
NATS_PY_VERSION="2.16.0"
if ! "$root/.local/venv/bin/python3" -c "import nats" 2>/dev/null; then
  echo "bench: installing nats-py $NATS_PY_VERSION into .local/venv"
  "$root/.local/venv/bin/pip" install --quiet --disable-pip-version-check "nats-py==$NATS_PY_VERSION"
fi
export JETPLUG_BENCH_PYTHON="$root/.local/venv/bin/python3"

work="$root/.local/bench"
rm -rf "$work"; mkdir -p "$work"
[ "$(id -u)" -eq 0 ] && chmod 755 "$root/.local" "$work"
JETPLUG_SERVERS="$root/target/release/jetplug-servers"
# shellcheck source=scripts/servers.sh
source "$root/scripts/servers.sh"
trap stop_servers EXIT
# A nats-server, a 3-node cluster for the R3 figures, PostgreSQL: free ports.
start_servers "$work" --nats 0 --cluster 0,0,0 --postgres 0

# The nats-server's process, for the CPU per message in the payload sweep.
if [ -n "${NATS_PID:-}" ]; then export JETPLUG_BENCH_NATS_PID="$NATS_PID"; fi
./target/release/jetplug-bench --nats "$NATS_URL" --postgres "$PG_URL" --cluster "$CLUSTER_URLS" \
  --record "$root/target/bench/latest.json" "$@"
