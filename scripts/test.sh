#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the wasm target, builds
# the plugins and the restore tools (age, zstd), starts the S3 test server
# (moto), makes sure MariaDB and
# PostgreSQL are up, then runs every test against them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Each run's services in a folder of its own (runs side by side never share
# a server's data directory); folders of runs that are gone are removed.
for stale in "$root"/target/test-services/run-*; do
    if [ -d "$stale" ] && ! kill -0 "${stale##*-}" 2>/dev/null; then rm -rf "$stale"; fi
done
work="$root/target/test-services/run-$$"
mkdir -p "$work"

say() { printf '\n== %s\n' "$*"; }

say "wasm32-wasip2 target"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

say "command-line tools for restores and checks by hand (age, zstd, sqlite3, minisign)"
missing=()
for tool in age zstd sqlite3 minisign; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}"
fi

say "plugins"
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
plugins/python/hello/build.sh "$root/plugins/target/wasm32-wasip2/release/hello_py.wasm"
plugins/js/hello/build.sh "$root/plugins/target/wasm32-wasip2/release/hello_js.wasm"
plugins/python/storage-failover/build.sh
plugins/js/storage-failover/build.sh
export DRHOST_TEST_PLUGINS="$root/plugins/target/wasm32-wasip2/release"

say "S3 test server (moto 5.1.22)"
if ! python3 -c 'import moto, flask' 2>/dev/null || [ "$(python3 -c 'import moto; print(moto.__version__)')" != "5.1.22" ]; then
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]==5.1.22'
fi
# A free port, so a stray server from an earlier run cannot answer for us.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
    kill -0 $moto_pid 2>/dev/null || { cat "$work/moto.log"; exit 1; }
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "moto did not start"; cat "$work/moto.log"; exit 1; }
export DRHOST_TEST_S3="http://127.0.0.1:$port"

say "MariaDB and PostgreSQL"
if ! mariadb -h 127.0.0.1 -P 3306 -u root -e 'SELECT 1' test >/dev/null 2>&1; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 100); do mariadb -h 127.0.0.1 -u root -e 'SELECT 1' test >/dev/null 2>&1 && break; sleep 0.2; done
fi
if ! psql -h 127.0.0.1 -U postgres -d test -c 'SELECT 1' >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 100); do psql -h 127.0.0.1 -U postgres -d test -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
fi

# Databases earlier runs' tests created (uniquely named, so they never collide,
# but they would pile up on the shared servers). DRHOST_TEST_KEEP_DBS=1 skips
# this, for a run beside another one still using its databases.
[ "${DRHOST_TEST_KEEP_DBS:-}" = 1 ] || for d in $(mariadb -h 127.0.0.1 -u root -N -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'drhost\\_bk\\_%'"); do
    mariadb -h 127.0.0.1 -u root -e "DROP DATABASE \`$d\`"
done
[ "${DRHOST_TEST_KEEP_DBS:-}" = 1 ] || for d in $(psql -h 127.0.0.1 -U postgres -d test -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'drhost\\_bk\\_%' OR datname LIKE 'drhost\\_st\\_%'"); do
    psql -h 127.0.0.1 -U postgres -d test -q -c "DROP DATABASE \"$d\" WITH (FORCE)"
done

# Private MariaDB servers, each with its own data directory and a free port:
# the shared server's configuration stays as it is.
pids=("$moto_pid")
trap 'kill "${pids[@]}" 2>/dev/null || true; wait; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_mariadb NAME PORT [mariadbd options…]
start_mariadb() {
    local name=$1 port=$2 dir="$work/mariadb-$1"
    shift 2
    rm -rf "$dir" && mkdir -p "$dir"
    mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
        --skip-test-db --user="$(id -un)" >"$dir/install.log" 2>&1 || { cat "$dir/install.log"; exit 1; }
    mariadbd --no-defaults --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
        --socket="$dir/mariadb.sock" --pid-file="$dir/mariadb.pid" --user="$(id -un)" \
        --innodb-buffer-pool-size=32M --skip-name-resolve "$@" >"$dir/server.log" 2>&1 &
    pids+=($!)
    mariadb-admin --no-defaults --wait=60 --connect-timeout=2 -h 127.0.0.1 -P "$port" -u root ping >/dev/null \
        || { cat "$dir/server.log"; exit 1; }
}

say "a private MariaDB with binary logging (incremental backups, point-in-time recovery)"
mport=$(free_port)
start_mariadb binlog "$mport" --server-id=1 --log-bin=binlog --binlog-format=ROW
mariadb --no-defaults -h 127.0.0.1 -P "$mport" -u root -e 'CREATE DATABASE IF NOT EXISTS test'
export DRHOST_TEST_MARIADB_BINLOG="mysql://root@127.0.0.1:$mport/test"

say "a private MariaDB with binary logging for the data-corruption drills"
# Its own: the point-in-time tests above replay events with fake times, and
# MariaDB was seen to hand such a clock on to later sessions.
dport=$(free_port)
start_mariadb drill "$dport" --server-id=2 --log-bin=binlog --binlog-format=ROW
mariadb --no-defaults -h 127.0.0.1 -P "$dport" -u root -e 'CREATE DATABASE IF NOT EXISTS test'
export DRHOST_TEST_MARIADB_DRILL="mysql://root@127.0.0.1:$dport/test"

say "a MariaDB primary and its replica (database failover)"
pport=$(free_port)
rport=$(free_port)
start_mariadb primary "$pport" --server-id=11 --log-bin=binlog --binlog-format=ROW
start_mariadb replica "$rport" --server-id=12 --log-bin=binlog --binlog-format=ROW --log-slave-updates --read-only=ON
mariadb --no-defaults -h 127.0.0.1 -P "$pport" -u root -e 'CREATE DATABASE IF NOT EXISTS test'
mariadb --no-defaults -h 127.0.0.1 -P "$rport" -u root -e "CHANGE MASTER TO MASTER_HOST='127.0.0.1',
    MASTER_PORT=$pport, MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos; START SLAVE"
export DRHOST_TEST_MARIADB_PRIMARY="mysql://root@127.0.0.1:$pport/test"
export DRHOST_TEST_MARIADB_REPLICA="mysql://root@127.0.0.1:$rport/test"

# With arguments, only `cargo test ARGS` runs, against the same servers
# (e.g. `./scripts/test.sh --test hostile`): for working on one area.
if [ $# -gt 0 ]; then
    say "cargo test $*"
    cargo test "$@"
    exit
fi

say "lints: rustfmt and clippy"
cargo fmt --all --check
cargo fmt --manifest-path plugins/Cargo.toml --all --check
cargo clippy --workspace --all-targets -- -D warnings

say "tests"
# The Rust SDK's unit tests and doc examples, and the reference plugins' own
# unit tests, run natively.
cargo test --manifest-path plugins/Cargo.toml -p drhost-plugin -p storage-failover -p db-failover -p app-health -p app-failover -p network-failover -p security-breach -p data-corruption -p runbook-storage -p runbook-database -p runbook-application
cargo test --workspace -- --test-threads 4
