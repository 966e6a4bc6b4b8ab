#!/usr/bin/env bash
# Quickstart, on the embedded defaults (no servers):
#  1. the recovery plan's scenario 3 (storage failure): two local buckets, the
#     primary damaged; `drhost run` detects, restores and verifies;
#  2. backups: a SQLite database backed up (zstd + age) to two local targets,
#     checked with the 10-point checklist, damaged, restored and checked again;
#  3. the storage failure as a drill: injected into sandbox buckets, recovered,
#     detection, recovery time and data loss measured against the targets.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p storage-failover
cargo build --quiet --release -p drhost

drhost=$root/target/release/drhost
work=$here/work
export DRHOST_STATE_DIR="$work/state"

echo "== 1. Storage failure: detect, restore from the secondary, verify"
"$drhost" quickstart "$work"
cp plugins/target/wasm32-wasip2/release/storage_failover.wasm "$work/storage-failover.wasm"
set +e
"$drhost" run "$work/storage-failover.wasm" --policy "$here/storage-failover.policy.toml" --out "$work/runs"
code=$?
set -e
log=$(ls -d "$work"/runs/*/ | tail -n 1)audit.jsonl
echo
"$drhost" audit verify "$log"

echo
echo "== 2. Backups: SQLite to two local targets, checklist, disaster, restore"
rm -rf "$work/backups"
"$drhost" quickstart --sample-db "$work/shop.db"
# The identity (secret key) stays with the operator; drhost.toml holds only the public recipient.
[ -f "$work/key.txt" ] || "$drhost" backup keygen > "$work/key.txt"
recipient=$(sed -n 's/^# public key: //p' "$work/key.txt")
cat > "$work/drhost.toml" <<TOML
[keys]
recipients = ["$recipient"]
identity = "key.txt"

[sources.shop]
kind = "sqlite"
path = "shop.db"

[targets.primary]
path = "backups/primary"

[targets.local-copy]
path = "backups/local-copy"

[retention]
keep-days = 30
keep-last = 3
TOML
export DRHOST_CONFIG="$work/drhost.toml"
"$drhost" backup create shop
"$drhost" backup verify latest --all-targets
"$drhost" quickstart --damage-db "$work/shop.db"
"$drhost" backup restore latest --to shop
"$drhost" backup list

echo
echo "== 3. The storage failure as a drill: inject into sandbox buckets, recover, measure"
unset DRHOST_CONFIG
set +e
"$drhost" drill "$work/storage-failover.wasm" --policy "$here/storage-failover.drill.policy.toml" \
    --out "$work/runs" --report "$work/drill-report" --junit "$work/drill-junit.xml"
drill_code=$?
set -e
echo "report: $work/drill-report/report.html (Markdown beside it), JUnit: $work/drill-junit.xml"
[ $code -ne 0 ] && exit $code
exit $drill_code
