#!/usr/bin/env bash
# Builds one Python or JavaScript plugin of plugins/ into a component:
#   scripts/build-guest.sh python plugins/NAME-py OUT.wasm   (DIR/app.py, componentize-py)
#   scripts/build-guest.sh js     plugins/NAME-js OUT.wasm   (DIR/plugin.js, componentize-js)
#   scripts/build-guest.sh js-quickjs plugins/NAME-js OUT.wasm (the same, componentize-qjs)
# DIR/plugin.wit holds the plugin's world (the imports it uses); it is built
# with wit/ as its dependency. The toolchains are the pinned ones
# scripts/setup.sh installs under .local/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lang="$1" dir="$2" out="$3"
mkdir -p "$(dirname "$out")"
[ -f "$dir/plugin.wit" ] || { echo "build-guest: $dir/plugin.wit (the plugin's world) is missing" >&2; exit 1; }
wit="$(mktemp -d)"
trap 'rm -rf "$wit"' EXIT
mkdir -p "$wit/deps/jetplug"
cp "$dir/plugin.wit" "$wit/"
cp "$root"/wit/*.wit "$wit/deps/jetplug/"
case "$lang" in
  python)
    cpy="$root/.local/venv/bin/componentize-py"
    [ -x "$cpy" ] || cpy="$(command -v componentize-py || true)"
    if [ -z "$cpy" ]; then
      echo "build-guest: componentize-py not found: run scripts/setup.sh (installs componentize-py 0.25.1 into .local/venv) or pip install componentize-py==0.25.1" >&2
      exit 1
    fi
    "$cpy" -d "$wit" -w plugin componentize app -p "$dir" -p "$root/sdk/python" -o "$out" >/dev/null
    ;;
  js)
    cjs="$root/.local/node/node_modules/@bytecodealliance/componentize-js/src/componentize.js"
    if ! command -v node >/dev/null 2>&1; then
      echo "build-guest: node not found: install Node.js >= 20 (Debian: apt-get install nodejs npm)" >&2
      exit 1
    fi
    if [ ! -f "$cjs" ]; then
      echo "build-guest: componentize-js not found: run scripts/setup.sh (installs @bytecodealliance/componentize-js 0.23.0 into .local/node)" >&2
      exit 1
    fi
    COMPONENTIZE_JS="$cjs" node "$root/sdk/js/build.mjs" "$dir/plugin.js" "$wit" "$out"
    ;;
  js-quickjs)
    command -v node >/dev/null 2>&1 || { echo "build-guest: node not found: install Node.js >= 20" >&2; exit 1; }
    qjs="$root/.local/node-qjs/node_modules/componentize-qjs"
    if [ ! -f "$qjs/package.json" ]; then
      echo "build-guest: componentize-qjs not found: run scripts/setup.sh (installs componentize-qjs 0.4.5 into .local/node-qjs)" >&2
      exit 1
    fi
    COMPONENTIZE_QJS="$qjs" JETPLUG_JS_ROOT="$root" node "$root/sdk/js/build.mjs" "$dir/plugin.js" "$wit" "$out" quickjs
    ;;
  *) echo "build-guest: unknown language '$lang' (python, js or js-quickjs)" >&2; exit 1 ;;
esac
echo "built $out ($(du -h "$out" | cut -f1))"
