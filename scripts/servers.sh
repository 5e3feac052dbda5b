# Sourced by scripts/demo.sh, demo-cluster.sh and bench.sh: the servers
# start through `jetplug-servers` (tests/src/bin), the same launchers the
# tests use. Callers set `root` and call stop_servers on exit.

servers_bin="${JETPLUG_SERVERS:-$root/target/debug/jetplug-servers}"
servers_pid=""

# start_servers DIR ARGS...: starts what ARGS ask for (--nats PORT,
# --cluster P,P,P, --postgres PORT ...; 0 = a free port) with its files
# under DIR, waits until every server is ready and sets NATS_URL, NATS_PID,
# CLUSTER_URLS, CLUSTER_PIDS, PG_URL and PG_PORT. Exits with the
# launcher's log if a server does not start.
start_servers() {
  local dir=$1; shift
  mkdir -p "$dir"
  rm -f "$dir/servers.env"
  if [ ! -x "$servers_bin" ]; then
    echo "error: $servers_bin not found (build it: cargo build -p jetplug-tests --bin jetplug-servers)" >&2
    exit 1
  fi
  "$servers_bin" --dir "$dir" --env "$dir/servers.env" "$@" >"$dir/servers.log" 2>&1 &
  servers_pid=$!
  for _ in $(seq 1200); do
    if [ -f "$dir/servers.env" ]; then
      # shellcheck source=/dev/null
      source "$dir/servers.env"
      return 0
    fi
    if ! kill -0 "$servers_pid" 2>/dev/null; then
      echo "error: the servers did not start:" >&2
      cat "$dir/servers.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: the servers are not ready after 2 minutes:" >&2
  cat "$dir/servers.log" >&2
  exit 1
}

# Stops what start_servers started (SIGTERM: clean shutdowns, data kept).
stop_servers() {
  if [ -n "$servers_pid" ] && kill -0 "$servers_pid" 2>/dev/null; then
    kill -TERM "$servers_pid"
    wait "$servers_pid" 2>/dev/null || true
  fi
  servers_pid=""
}
