#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the wasm target, builds
# the plugins and the restore tools (age, zstd), starts the S3 test server
# (moto), makes sure MariaDB and
# PostgreSQL are up, then runs every test against them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work="$root/target/test-services"
mkdir -p "$work"

say() { printf '\n== %s\n' "$*"; }

say "wasm32-wasip2 target"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

say "command-line tools for restores by hand (age, zstd, sqlite3)"
missing=()
for tool in age zstd sqlite3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
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
# but they would pile up on the shared servers).
for d in $(mariadb -h 127.0.0.1 -u root -N -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'drhost\\_bk\\_%'"); do
    mariadb -h 127.0.0.1 -u root -e "DROP DATABASE \`$d\`"
done
for d in $(psql -h 127.0.0.1 -U postgres -d test -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'drhost\\_bk\\_%'"); do
    psql -h 127.0.0.1 -U postgres -d test -q -c "DROP DATABASE \"$d\" WITH (FORCE)"
done

say "a private MariaDB with binary logging (incremental backups, point-in-time recovery)"
# Its own data directory and port: the shared server's configuration stays as it is.
mdb="$work/mariadb-binlog"
rm -rf "$mdb" && mkdir -p "$mdb"
mariadb-install-db --no-defaults --datadir="$mdb/data" --auth-root-authentication-method=normal \
    --skip-test-db --user="$(id -un)" >"$mdb/install.log" 2>&1 || { cat "$mdb/install.log"; exit 1; }
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mariadbd --no-defaults --datadir="$mdb/data" --port="$mport" --bind-address=127.0.0.1 \
    --socket="$mdb/mariadb.sock" --pid-file="$mdb/mariadb.pid" --user="$(id -un)" \
    --server-id=1 --log-bin="$mdb/data/binlog" --binlog-format=ROW \
    --innodb-buffer-pool-size=64M --skip-name-resolve >"$mdb/server.log" 2>&1 &
mdb_pid=$!
trap 'kill $moto_pid $mdb_pid 2>/dev/null || true' EXIT
mariadb-admin --no-defaults --wait=60 --connect-timeout=2 -h 127.0.0.1 -P "$mport" -u root ping >/dev/null \
    || { cat "$mdb/server.log"; exit 1; }
mariadb --no-defaults -h 127.0.0.1 -P "$mport" -u root -e 'CREATE DATABASE IF NOT EXISTS test'
export DRHOST_TEST_MARIADB_BINLOG="mysql://root@127.0.0.1:$mport/test"

say "tests"
# The Rust SDK's unit tests and doc examples, and the reference plugins' own
# unit tests, run natively.
cargo test --manifest-path plugins/Cargo.toml -p drhost-plugin -p storage-failover -p app-health -p app-failover -p network-failover -p security-breach -p data-corruption
cargo test --workspace -- --test-threads 4
