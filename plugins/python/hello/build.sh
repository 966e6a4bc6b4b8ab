#!/usr/bin/env bash
# Builds hello_py.wasm with componentize-py (installed from PyPI if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:-$root/plugins/target/wasm32-wasip2/release/hello_py.wasm}
command -v componentize-py >/dev/null 2>&1 && componentize-py --version | grep -q '0.25.1' \
    || python3 -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
mkdir -p "$(dirname "$out")"
cd "$here"
componentize-py -d "$root/wit" -w drhost:plugin/scenario@0.2.0 componentize app -o "$out"
