#!/usr/bin/env bash
# `make demo`: the AIVO topology end to end on this machine.
# Starts nats-server (4222) and PostgreSQL (54321) under .local/demo unless
# they are already running (through jetplug-servers, the tests' launchers), runs the host with examples/aivo/jetplug.toml,
# publishes sample traffic (2% malformed), prints a summary and checks it
# against what the traffic must produce (exit 1 if not), then stops the
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
# shellcheck source=scripts/demo-lib.sh
source "$root/scripts/demo-lib.sh"
trap cleanup EXIT

# What is not already running starts through jetplug-servers (the tests'
# launchers); its data stays under .local/demo between runs.
servers=()
if listening 4222; then
  say "nats-server: already running on 4222, reusing it"
else
  say "starting nats-server on 4222 (store: .local/demo/nats)"
  servers+=(--nats 4222)
fi
if listening 54321; then
  say "PostgreSQL: already running on 54321, reusing it"
else
  say "starting PostgreSQL on 54321 (data: .local/demo/pg)"
  servers+=(--postgres 54321)
fi
[ "${#servers[@]}" -eq 0 ] || start_servers "$demo" "${servers[@]}"
baseline

say "jetplug check"
"$jetplug" check --config "$config"

say "starting the host (log: .local/demo/host.log)"
"$jetplug" run --config "$config" >"$demo/host.log" 2>&1 &
host_pids+=($!)
wait_consuming "${host_pids[0]}" "$demo/host.log" 6

say "publishing $count sample events (every ${every}th malformed)"
"$jetplug" publish --config "$config" --count "$count" --malformed-every "$every"
expect_results "$count" "$every"
wait_for_results
summary
check

say "stopping"
kill -TERM "${host_pids[0]}"; wait "${host_pids[0]}" && echo "host stopped cleanly (exit 0)"
host_pids=()
[ "$demo_ok" -eq 1 ] || exit 1
