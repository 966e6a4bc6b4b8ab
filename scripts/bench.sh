#!/usr/bin/env bash
# Benchmarks: builds the plugins and runs host/benches/runtime.rs in release.
# Set DRHOST_BENCH_S3=http://127.0.0.1:PORT (an S3 server) to add a 1 GiB copy to S3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
plugins/python/hello/build.sh
plugins/js/hello/build.sh
cargo bench --bench runtime
