# Shared by scripts/demo.sh and scripts/demo-cluster.sh (sourced, not run):
# the servers (scripts/servers.sh), the expected results of `jetplug
# publish` traffic, the summary and its check. Callers set: root, demo
# (work dir), config, jetplug; and call `trap cleanup EXIT`.

# shellcheck source=scripts/servers.sh
source "$root/scripts/servers.sh"
# PostgreSQL runs as `postgres` when the demo runs as root: it must reach
# its data under .local.
if [ "$(id -u)" -eq 0 ]; then chmod 755 "$root/.local" "$demo"; fi

say() { printf '\n== %s\n' "$*"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

host_pids=()     # jetplug run processes: SIGTERM, then wait

cleanup() {
  local status=$?
  # A failed demo shows the end of each host's log (CI keeps only the output).
  if [ "$status" -ne 0 ]; then
    for log in "$demo"/host*.log; do
      [ -f "$log" ] && { echo "== the end of ${log#"$root"/}" >&2; tail -30 "$log" >&2; }
    done
  fi
  for pid in "${host_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  done
  stop_servers
}

# Waits until host $1 (a pid) logs `consuming` for $3 consumers in log $2.
# A host that exits or is not consuming within 3 minutes (a fresh machine
# compiles the plugins first) fails the demo with the end of its log.
wait_consuming() {
  local pid=$1 log=$2 want=$3
  for _ in $(seq 1800); do
    [ "$(grep -c consuming "$log" || true)" -ge "$want" ] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: the host exited before consuming; the end of ${log#"$root"/}:" >&2
      tail -40 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: the host is not consuming after 3 minutes; the end of ${log#"$root"/}:" >&2
  tail -40 "$log" >&2
  exit 1
}

sql() { psql -h 127.0.0.1 -p 54321 -U postgres -Atc "$1" 2>/dev/null; }

# Dead letters in the DLQ stream (nothing when the stream does not exist yet).
dead_letters() {
  { "$jetplug" dlq list --config "$config" 2>/dev/null || true; } \
    | sed -n 's/^\([0-9]*\) dead letters in.*/\1/p' | head -1
}

# What is there before this run: the check counts only what the run adds.
baseline() {
  psql -h 127.0.0.1 -p 54321 -U postgres -q -f examples/aivo/schema.sql
  before=$(sql "select count(*) from events")
  counted_before=$(sql "select coalesce(sum(count),0) from event_counts")
  dlq_before=$(dead_letters); dlq_before=${dlq_before:-0}
}

# What `jetplug publish --count $1 --malformed-every $2` must produce: it
# sends the AIVO subjects in turn (learning x2, focus x2, homework,
# recommendation), malformed ones in their own turn; the indexer takes all
# four streams, the aggregator learning and focus, and each dead-letters
# the malformed events it sees.
expect_results() {
  local count=$1 every=$2 i malformed=0
  want_counted=0 want_dlq=0
  for ((i = 0; i < count; i++)); do
    if (( (i + 1) % every == 0 )); then
      (( malformed % 6 < 4 )) && want_dlq=$((want_dlq + 2)) || want_dlq=$((want_dlq + 1))
      malformed=$((malformed + 1))
    elif (( i % 6 < 4 )); then
      want_counted=$((want_counted + 1))
    fi
  done
  want_indexed=$((count - malformed))
}

# Waits (up to a minute) until the run's rows and dead letters are there.
wait_for_results() {
  for _ in $(seq 600); do
    [ "$(sql "select count(*) from events")" -ge "$((before + want_indexed))" ] && break; sleep 0.1
  done
  for _ in $(seq 300); do
    [ "$(( $(dead_letters) - dlq_before ))" -ge "$want_dlq" ] && break; sleep 0.1
  done
  sleep 1
}

summary() {
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
}

# Sets demo_ok to 1 when the summary is what the traffic must produce.
check() {
  say "check"
  if [ "$indexed" -eq "$want_indexed" ] && [ "$counted" -eq "$want_counted" ] && [ "$dlq" -eq "$want_dlq" ]; then
    echo "as expected: $indexed indexed, $counted counted, $dlq dead letters"
    demo_ok=1
  else
    echo "WRONG: indexed $indexed (want $want_indexed), counted $counted (want $want_counted), dead letters $dlq (want $want_dlq)"
    demo_ok=0
  fi
}
