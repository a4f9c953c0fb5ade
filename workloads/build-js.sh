#!/usr/bin/env bash
# Rebuild the JavaScript guest bin/hello-js.wasm: a wasi:http "hello" built with
# componentize-js (StarlingMonkey, SpiderMonkey compiled to Wasm), about 13 MB. It is
# the large component of the registry benchmark. Needs node and npm (it downloads
# componentize-js, ~400 MB); the committed bin/hello-js.wasm is used otherwise.
#
#   ./build-js.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMPONENTIZE_JS=0.23.0
command -v npm >/dev/null 2>&1 || { echo "build-js.sh: npm not found" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm install --no-audit --no-fund "@bytecodealliance/componentize-js@$COMPONENTIZE_JS" >/dev/null

# The wasi WIT of the wasmtime-wasi-http crate Skiff builds with, relabelled 0.2.10 (see
# js/hello-js/world.wit).
deps="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-48.0.8/wit/deps | head -1)"
[ -d "$deps" ] || { echo "build-js.sh: run cargo fetch in the repository first" >&2; exit 1; }
mkdir -p wit
cp -r "$deps" wit/deps
sed -i -E 's/@0\.2\.12/@0.2.10/g; s/@since\(version = 0\.2\.1[12]\)/@since(version = 0.2.10)/g' wit/deps/*.wit
cp "$HERE/js/hello-js/world.wit" wit/world.wit

node node_modules/@bytecodealliance/componentize-js/src/cli.js \
    "$HERE/js/hello-js/app.js" --wit wit -n hello -o "$HERE/bin/hello-js.wasm"
echo "built $HERE/bin/hello-js.wasm ($(stat -c %s "$HERE/bin/hello-js.wasm") bytes)"
