#!/usr/bin/env bash
# `make demo-cluster`: the AIVO topology on a local 3-node JetStream cluster
# with two jetplug hosts. Starts nodes n1..n3 on 4222/4223/4224 (monitoring
# 8222-8224, routes 6222-6224) under .local/demo-cluster and PostgreSQL on
# 54321 (reused if running), runs two hosts with
# examples/aivo-cluster/jetplug.toml, publishes sample traffic and SIGKILLs
# the node leading LEARNING mid-run, then prints the same summary as
# `make demo` plus which node leads each stream, and checks it (exit 1 if
# wrong). Everything it started is stopped at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.local/venv/bin:$PATH"

demo="$root/.local/demo-cluster"
config="examples/aivo-cluster/jetplug.toml"
jetplug="$root/target/debug/jetplug"
count="${DEMO_EVENTS:-3000}"
rate="${DEMO_RATE:-500}"
every=50
mkdir -p "$demo"
# shellcheck source=scripts/demo-lib.sh
source "$root/scripts/demo-lib.sh"
trap cleanup EXIT

for port in 4222 4223 4224; do
  if listening "$port"; then
    echo "port $port is in use (a nats-server of \`make demo\`?): stop it first" >&2
    exit 1
  fi
done

say "starting a 3-node JetStream cluster on 4222/4223/4224 (store: .local/demo-cluster/cluster/n*)"
servers=(--cluster 4222,4223,4224 --cluster-monitor 8222,8223,8224 --cluster-routes 6222,6223,6224
  --cluster-name aivo --first-node 1)
if listening 54321; then
  say "PostgreSQL: already running on 54321, reusing it"
else
  say "starting PostgreSQL on 54321 (data: .local/demo-cluster/pg)"
  servers+=(--postgres 54321)
fi
start_servers "$demo" "${servers[@]}"
read -r -a pids <<<"$CLUSTER_PIDS"
declare -A node_pid=([1]="${pids[0]}" [2]="${pids[1]}" [3]="${pids[2]}")
say "jetplug streams apply (five streams, three replicas each)"
for _ in $(seq 50); do "$jetplug" streams apply --config "$config" >"$demo/streams.log" 2>&1 && break; sleep 0.2; done
cat "$demo/streams.log"
baseline

say "jetplug check"
"$jetplug" check --config "$config"

# The second host: the same configuration, its admin server on 9092.
sed -e 's|127.0.0.1:9091|127.0.0.1:9092|' -e "s|\"\\.\\./\\.\\./|\"$root/|" "$config" >"$demo/host-b.toml"
say "starting two hosts (logs: .local/demo-cluster/host-a.log, host-b.log)"
"$jetplug" run --config "$config" >"$demo/host-a.log" 2>&1 &
host_pids+=($!)
"$jetplug" run --config "$demo/host-b.toml" >"$demo/host-b.log" 2>&1 &
host_pids+=($!)
wait_consuming "${host_pids[0]}" "$demo/host-a.log" 6
wait_consuming "${host_pids[1]}" "$demo/host-b.log" 6

leader_of() {  # the node leading stream $1, from the monitoring endpoints
  local port
  for port in 8222 8223 8224; do
    python3 - "$port" "$1" <<'PY' 2>/dev/null && return 0
import json, sys, urllib.request
port, stream = sys.argv[1], sys.argv[2]
data = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz?streams=1", timeout=2))
for acc in data.get("account_details", []):
    for s in acc.get("stream_detail", []):
        if s.get("name") == stream and s.get("cluster", {}).get("leader"):
            print(s["cluster"]["leader"]); sys.exit(0)
sys.exit(1)
PY
  done
  echo "none"
}

say "publishing $count sample events at $rate/s (every ${every}th malformed)"
"$jetplug" --log "${DEMO_PUBLISH_LOG:-warn}" publish --config "$config" --count "$count" --rate "$rate" --malformed-every "$every" 2>"$demo/publish.log" &
publisher=$!
sleep "$(( count / rate / 3 + 1 ))"
victim=$(leader_of LEARNING)
if [ "$victim" != "none" ]; then
  say "SIGKILL node $victim (it leads LEARNING) mid-run"
  kill -KILL "${node_pid[${victim#n}]}" 2>/dev/null || true
fi
wait "$publisher"

expect_results "$count" "$every"
wait_for_results
summary
say "stream leaders now"
for s in LEARNING FOCUS HOMEWORK RECOMMENDATION DLQ; do printf '  %-15s %s\n' "$s" "$(leader_of "$s")"; done
check

say "stopping"
for pid in "${host_pids[@]}"; do kill -TERM "$pid"; done
for pid in "${host_pids[@]}"; do wait "$pid" || true; done
host_pids=()
echo "hosts stopped"
[ "$demo_ok" -eq 1 ] || exit 1
