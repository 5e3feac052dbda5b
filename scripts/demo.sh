#!/usr/bin/env bash
# `make demo`: the AIVO topology end to end on this machine.
# Starts nats-server (4222) and PostgreSQL (54321) under .local/demo unless
# they are already running, runs the host with examples/aivo/jetplug.toml,
# publishes sample traffic (2% malformed), prints a summary, then stops the
# host and the services it started.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.local/venv/bin:$PATH"

demo="$root/.local/demo"
config="examples/aivo/jetplug.toml"
jetplug="$root/target/debug/jetplug"
count="${DEMO_EVENTS:-3000}"
every=50
mkdir -p "$demo"

say() { printf '\n== %s\n' "$*"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
started=()
cleanup() {
  if [ -n "${host_pid:-}" ] && kill -0 "$host_pid" 2>/dev/null; then
    kill -TERM "$host_pid"; wait "$host_pid" || true
  fi
  for svc in "${started[@]}"; do
    case "$svc" in
      nats) kill -TERM "$(cat "$demo/nats.pid")" 2>/dev/null || true ;;
      pg) kill -INT "$(cat "$demo/pg/data/postmaster.pid" 2>/dev/null | head -1)" 2>/dev/null || true ;;
    esac
  done
}
trap cleanup EXIT

pg_bin="$(dirname "$(command -v postgres 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)")"
as_pg() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }

if listening 4222; then
  say "nats-server: already running on 4222, reusing it"
else
  say "starting nats-server on 4222 (store: .local/demo/nats)"
  nats-server -js -a 127.0.0.1 -p 4222 -sd "$demo/nats" >"$demo/nats.log" 2>&1 &
  echo $! >"$demo/nats.pid"; started+=(nats)
  for _ in $(seq 50); do listening 4222 && break; sleep 0.1; done
fi

if listening 54321; then
  say "PostgreSQL: already running on 54321, reusing it"
else
  say "starting PostgreSQL on 54321 (data: .local/demo/pg)"
  mkdir -p "$demo/pg/run"
  if [ ! -f "$demo/pg/data/PG_VERSION" ]; then
    mkdir -p "$demo/pg/data"
    [ "$(id -u)" -eq 0 ] && chown -R postgres: "$demo/pg" && chmod 755 "$root/.local" "$demo"
    as_pg "$pg_bin/initdb" -D "$demo/pg/data" -U postgres -A trust -E UTF8 --no-instructions >"$demo/initdb.log"
  fi
  [ "$(id -u)" -eq 0 ] && chown -R postgres: "$demo/pg"
  as_pg "$pg_bin/postgres" -D "$demo/pg/data" -p 54321 -k "$demo/pg/run" -c listen_addresses=127.0.0.1 \
    >"$demo/pg.log" 2>&1 &
  started+=(pg)
  for _ in $(seq 100); do psql -h 127.0.0.1 -p 54321 -U postgres -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
fi

sql() { psql -h 127.0.0.1 -p 54321 -U postgres -Atc "$1" 2>/dev/null; }
psql -h 127.0.0.1 -p 54321 -U postgres -q -f examples/aivo/schema.sql
before=$(sql "select count(*) from events")
counted_before=$(sql "select coalesce(sum(count),0) from event_counts")
dead_letters() { "$jetplug" dlq list --config "$config" 2>/dev/null | sed -n 's/^\([0-9]*\) dead letters in.*/\1/p' | head -1; }
dlq_before=$(dead_letters); dlq_before=${dlq_before:-0}

say "jetplug check"
"$jetplug" check --config "$config"

say "starting the host (log: .local/demo/host.log)"
"$jetplug" run --config "$config" >"$demo/host.log" 2>&1 &
host_pid=$!
for _ in $(seq 100); do [ "$(grep -c consuming "$demo/host.log" || true)" -ge 6 ] && break; sleep 0.1; done

say "publishing $count sample events (every ${every}th malformed)"
"$jetplug" publish --config "$config" --count "$count" --malformed-every "$every"

# What the run must produce: `jetplug publish` sends the AIVO subjects in
# turn (learning x2, focus x2, homework, recommendation), malformed ones in
# their own turn; the indexer takes all four streams, the aggregator
# learning and focus, and each dead-letters the malformed events it sees.
malformed=0 want_counted=0 want_dlq=0
for ((i = 0; i < count; i++)); do
  if (( (i + 1) % every == 0 )); then
    (( malformed % 6 < 4 )) && want_dlq=$((want_dlq + 2)) || want_dlq=$((want_dlq + 1))
    malformed=$((malformed + 1))
  elif (( i % 6 < 4 )); then
    want_counted=$((want_counted + 1))
  fi
done
want_indexed=$((count - malformed))
want=$((before + want_indexed))
for _ in $(seq 600); do
  [ "$(sql "select count(*) from events")" -ge "$want" ] && break; sleep 0.1
done
for _ in $(seq 300); do
  [ "$(( $(dead_letters) - dlq_before ))" -ge "$want_dlq" ] && break; sleep 0.1
done
sleep 1

say "summary"
indexed=$(( $(sql "select count(*) from events") - before ))
counted=$(( $(sql "select coalesce(sum(count),0) from event_counts") - counted_before ))
echo "events indexed this run:  $indexed  (total $(sql "select count(*) from events"))"
echo "events counted this run:  $counted  (learning + focus)"
echo
echo "indexed by domain:"
sql "select '  ' || domain || ': ' || count(*) from events group by domain order by domain"
echo "counts by (domain, entity, action), all minutes:"
sql "select '  ' || k || ': ' || n from (select domain || '.' || entity || '.' || action as k, sum(count) as n from event_counts group by 1) t order by k"
echo
"$jetplug" dlq list --config "$config"
dlq=$(( $(dead_letters) - dlq_before ))

say "check"
if [ "$indexed" -eq "$want_indexed" ] && [ "$counted" -eq "$want_counted" ] && [ "$dlq" -eq "$want_dlq" ]; then
  echo "as expected: $indexed indexed, $counted counted, $dlq dead letters"
  demo_ok=1
else
  echo "WRONG: indexed $indexed (want $want_indexed), counted $counted (want $want_counted), dead letters $dlq (want $want_dlq)"
  demo_ok=0
fi

say "stopping"
kill -TERM "$host_pid"; wait "$host_pid" && echo "host stopped cleanly (exit 0)"
host_pid=
[ "$demo_ok" -eq 1 ] || exit 1
