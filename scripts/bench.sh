#!/usr/bin/env bash
# `make bench`: `jetplug-bench` (release build) against a dedicated
# nats-server, a 3-node JetStream cluster and PostgreSQL started here on
# free ports under .local/bench,
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
rm -rf "$work"; mkdir -p "$work/pg/run"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

nats_port=$(free_port)
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)

# A 3-node cluster for the R3 figures (client and route ports free ports).
cluster_ports=() route_ports=()
for n in 1 2 3; do cluster_ports+=("$(free_port)"); route_ports+=("$(free_port)"); done
routes=$(printf 'nats-route://127.0.0.1:%s,' "${route_ports[@]}"); routes=${routes%,}
for i in 0 1 2; do
  nats-server -js -n "bench$i" -a 127.0.0.1 -p "${cluster_ports[$i]}" -sd "$work/cluster$i" \
    --cluster_name bench --cluster "nats://127.0.0.1:${route_ports[$i]}" --routes "$routes" \
    >"$work/cluster$i.log" 2>&1 &
  pids+=($!)
done
cluster_urls=$(printf 'nats://127.0.0.1:%s,' "${cluster_ports[@]}"); cluster_urls=${cluster_urls%,}

pg_bin="$(dirname "$(command -v postgres 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)")"
as_pg() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work/pg" && chmod 755 "$root/.local" "$work"
as_pg "$pg_bin/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --no-instructions >"$work/initdb.log"
pg_port=$(free_port)
pg_args=(-D "$work/pg/data" -p "$pg_port" -k "$work/pg/run" -c listen_addresses=127.0.0.1)
# Started directly (not through a function) so that $! is postgres itself.
if [ "$(id -u)" -eq 0 ]; then
  setpriv --reuid=postgres --regid=postgres --init-groups -- "$pg_bin/postgres" "${pg_args[@]}" >"$work/pg.log" 2>&1 &
else
  "$pg_bin/postgres" "${pg_args[@]}" >"$work/pg.log" 2>&1 &
fi
pids+=($!)
for _ in $(seq 100); do listening "$nats_port" && listening "$pg_port" && break; sleep 0.1; done

for p in "${cluster_ports[@]}"; do for _ in $(seq 100); do listening "$p" && break; sleep 0.1; done; done
sleep 2  # the cluster elects its JetStream meta leader

./target/release/jetplug-bench --nats "nats://127.0.0.1:$nats_port" \
  --postgres "postgres://postgres@127.0.0.1:$pg_port/postgres" --cluster "$cluster_urls" \
  --record "$root/target/bench/latest.json" "$@"
