#!/usr/bin/env bash
# Builds hello_js.wasm with componentize-js 0.23.0 (npm; installed into
# plugins/js/node_modules if missing). componentize-js is called directly:
# `jco componentize` fails here, and --aot would download a binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
js=$(cd "$here/.." && pwd)
root=$(cd "$js/../.." && pwd)
out=${1:-$root/plugins/target/wasm32-wasip2/release/hello_js.wasm}
bin="$js/node_modules/.bin/componentize-js"
if ! [ -x "$bin" ] || [ "$("$bin" --version)" != "0.23.0" ]; then
    (cd "$js" && npm install --no-audit --no-fund --silent)
fi
mkdir -p "$(dirname "$out")"
"$bin" "$here/hello.js" --wit "$root/wit" -n drhost:plugin/scenario@0.2.0 -o "$out"
