#!/usr/bin/env bash
# `make bench`: `jetplug bench` (release build) against a dedicated
# nats-server and PostgreSQL started here on free ports under .local/bench,
# stopped afterwards. Extra arguments go to `jetplug bench`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.local/venv/bin:$PATH"

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

./target/release/jetplug bench --nats "nats://127.0.0.1:$nats_port" \
  --postgres "postgres://postgres@127.0.0.1:$pg_port/postgres" "$@"
