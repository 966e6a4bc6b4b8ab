# Helpers for the examples' drill setup and teardown scripts (sourced, in the
# example's directory). They start what a drill needs from tests/fixtures and
# private MariaDB servers, on free loopback ports, and record what they
# started in work/ so that `stop_all` can stop it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fixtures=$root/tests/fixtures
work=$PWD/work
mkdir -p "$work"
: "${DRHOST:=$root/target/release/drhost}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bg NAME COMMAND…: runs in the background in its own session; remembered
# with its start time, so that stop_all never signals a process that only
# reuses the number (PIDs wrap around quickly on a busy machine).
bg() {
    local name=$1
    shift
    setsid "$@" >"$work/$name.log" 2>&1 </dev/null &
    printf '%s %s\n' "$!" "$(started "$!")" >>"$work/pids"
}

# When a process started (clock ticks since boot): a PID plus this names one
# process, even after the number is reused.
started() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null || echo gone; }

wait_http() {
    for _ in $(seq 1 200); do
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$1 did not answer" >&2
    return 1
}

# start_app PORT NAME: the tests' application server; stopped by stop_all
# even when an allow-listed restart replaced the process.
start_app() {
    "$fixtures/start-app.sh" "$1" "$2" >/dev/null
    echo "$1" >>"$work/app-ports"
}

# state KEY VALUE: the scenario's state, as `drhost state set` writes it.
state() { "$DRHOST" state set -- "$scenario" "$1" "$2" >/dev/null; }

# start_mariadb NAME PORT [options…]: a private server with its own data directory.
start_mariadb() {
    local name=$1 port=$2 dir="$work/mariadb-$1"
    shift 2
    rm -rf "$dir" && mkdir -p "$dir"
    mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
        --skip-test-db --user="$(id -un)" >"$dir/install.log" 2>&1
    bg "mariadb-$name" mariadbd --no-defaults --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
        --socket="$dir/mariadb.sock" --pid-file="$dir/mariadb.pid" --user="$(id -un)" \
        --innodb-buffer-pool-size=32M --skip-name-resolve "$@"
    mariadb-admin --no-defaults --wait=60 --connect-timeout=2 -h 127.0.0.1 -P "$port" -u root ping >/dev/null
}

sql() { local port=$1; shift; mariadb --no-defaults -h 127.0.0.1 -P "$port" -u root -e "$*"; }

# The account detect and verify steps read through (the policies' read-url):
# root's privileges reach past a read-only transaction, so drhost refuses to
# read through root in a read-only phase.
read_account() {
    sql "$1" "CREATE USER 'drhost_ro'@'%' IDENTIFIED BY 'drhost-ro';
        GRANT SELECT, SLAVE MONITOR ON *.* TO 'drhost_ro'@'%'"
}

# A fresh age key and drhost.toml header in work/.
backup_keys() {
    "$DRHOST" backup keygen >"$work/key.txt"
    printf '[keys]\nrecipients = ["%s"]\nidentity = "key.txt"\n' "$(sed -n 's/^# public key: //p' "$work/key.txt")"
}

stop_all() {
    if [ -f "$work/app-ports" ]; then
        while read -r port; do
            python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="POST"), timeout=1)' \
                "http://127.0.0.1:$port/crash" 2>/dev/null || true
        done <"$work/app-ports"
        rm -f "$work/app-ports"
    fi
    if [ -f "$work/pids" ]; then
        while read -r pid start; do
            # Only if that PID is still the process bg started.
            [ "$(started "$pid")" = "$start" ] && kill "$pid" 2>/dev/null || true
        done <"$work/pids"
        rm -f "$work/pids"
    fi
}
