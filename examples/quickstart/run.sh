#!/usr/bin/env bash
# Quickstart: the recovery plan's scenario 3 (storage failure) on the embedded
# defaults, no servers. Builds drhost and the plugin, prepares two local
# buckets, damages the primary, and lets `drhost run` detect, restore, verify.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p storage-failover
cargo build --quiet --release -p drhost

drhost=target/release/drhost
export DRHOST_STATE_DIR="$here/work/state"
"$drhost" quickstart "$here/work"
cp plugins/target/wasm32-wasip2/release/storage_failover.wasm "$here/work/storage-failover.wasm"

set +e
"$drhost" run "$here/work/storage-failover.wasm" --policy "$here/storage-failover.policy.toml" --out "$here/work/runs"
code=$?
set -e
log=$(ls -d "$here"/work/runs/*/ | tail -n 1)audit.jsonl
echo
"$drhost" audit verify "$log"
exit $code
