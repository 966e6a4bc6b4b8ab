#!/usr/bin/env bash
# `drhost serve` benchmarks, on this machine's real PostgreSQL and a SQLite file:
#   1. idle overhead: the plan's schedules (15-minute incrementals, a daily
#      full at 02:00, verify, prune, weekly restore test), nothing due;
#      CPU seconds and resident memory over IDLE_S seconds;
#   2. throughput: N schedules each due every second (a `true` command),
#      jobs finished per minute by one host, SQLite and PostgreSQL;
#   3. takeover: two hosts on PostgreSQL, the one running a job is killed
#      (SIGKILL, its job with it); time until the other has finished the job.
# Usage: scripts/bench-serve.sh [IDLE_S] [SCHEDULES]   (defaults 60, 40)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
idle_s=${1:-60}
schedules=${2:-40}
work="$root/target/bench-serve"
rm -rf "$work" && mkdir -p "$work"
cargo build --quiet --release -p drhost
drhost="$root/target/release/drhost"
pg_admin="postgres://postgres@127.0.0.1:5432/test"
ticks=$(getconf CLK_TCK)

cpu_s() { awk -v t="$ticks" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
fresh_pg() {
    local name="drhost_bench_state_$1"
    psql "$pg_admin" -q -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name"
    echo "postgres://postgres@127.0.0.1:5432/$name"
}
count() { # count STATE_URL: succeeded jobs
    case $1 in
        sqlite:*) sqlite3 -cmd ".timeout 10000" "${1#sqlite:}" "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'" ;;
        *) psql "$1" -At -c "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'" ;;
    esac
}

# 1. Idle.
mkdir -p "$work/idle"
sqlite3 "$work/idle/app.db" "CREATE TABLE t(x); INSERT INTO t VALUES (1);"
cat >"$work/idle/drhost.toml" <<TOML
state = "sqlite:$work/idle/state.db"
encryption = "none"
[serve]
listen = "127.0.0.1:0"
[sources.app]
kind = "sqlite"
path = "app.db"
[sources.scratch]
kind = "sqlite"
path = "scratch.db"
[targets.local]
path = "backups"
[schedule.incremental]
cron = "*/15 * * * *"
job = "prune"
[schedule.daily-full]
cron = "0 2 * * *"
job = "backup"
source = "app"
[schedule.verify]
cron = "30 2 * * *"
job = "verify"
source = "app"
[schedule.weekly-restore-test]
cron = "0 3 * * SUN"
job = "restore-test"
source = "app"
to = "scratch"
TOML
DRHOST_STATE_DIR="$work/idle/state" "$drhost" serve --config "$work/idle/drhost.toml" 2>"$work/idle/log" &
pid=$!
sleep 3
c0=$(cpu_s $pid)
sleep "$idle_s"
c1=$(cpu_s $pid)
rss=$(rss_mib $pid)
kill -TERM $pid; wait $pid || true
echo "idle: $(awk -v a="$c0" -v b="$c1" -v s="$idle_s" 'BEGIN { printf "%.3f CPU-s over %d s (%.3f%% of one core)", b - a, s, (b - a) / s * 100 }'), RSS $rss MiB"

# 2. Throughput.
throughput() { # throughput NAME STATE_URL
    local dir="$work/$1"
    mkdir -p "$dir"
    {
        echo "state = \"$2\""
        echo 'encryption = "none"'
        echo '[serve]'
        echo 'listen = "127.0.0.1:0"'
        for i in $(seq 1 "$schedules"); do
            printf '[schedule.s%02d]\ncron = "* * * * * *"\njob = "command"\ncommand = ["true"]\n' "$i"
        done
    } >"$dir/drhost.toml"
    DRHOST_STATE_DIR="$dir/state" "$drhost" serve --config "$dir/drhost.toml" 2>"$dir/log" &
    local pid=$!
    sleep 5
    local n0 c0
    n0=$(count "$2"); c0=$(cpu_s $pid)
    sleep 30
    local n1 c1 rss
    n1=$(count "$2"); c1=$(cpu_s $pid); rss=$(rss_mib $pid)
    kill -TERM $pid; wait $pid || true
    echo "throughput ($1, $schedules schedules due every second): $(( (n1 - n0) * 2 )) jobs/minute (offered $(( schedules * 60 ))), CPU $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.0f%%", (b - a) / 30 * 100 }') of one core, RSS $rss MiB"
}
throughput sqlite "sqlite:$work/sqlite/state.db"
throughput postgres "$(fresh_pg throughput)"

# 3. Takeover.
url=$(fresh_pg takeover)
mkdir -p "$work/takeover"
cat >"$work/takeover/drhost.toml" <<TOML
state = "$url"
encryption = "none"
[serve]
listen = "127.0.0.1:0"
lease = "${LEASE:-10s}"
[schedule.job]
cron = "* * * * * *"
job = "command"
command = ["sh", "-c", "if [ \"\$DRHOST_ATTEMPT\" = 1 ]; then exec sleep 600; fi"]
TOML
start() { setsid env DRHOST_STATE_DIR="$work/takeover/$1" "$drhost" serve --config "$work/takeover/drhost.toml" >/dev/null 2>"$work/takeover/$1.log" & echo $!; }
a=$(start a)
until [ "$(psql "$url" -At -c "SELECT COUNT(*) FROM schedules WHERE running_due_ms IS NOT NULL" 2>/dev/null)" = 1 ]; do sleep 0.1; done
b=$(start b)
sleep 2
owner=$(psql "$url" -At -c "SELECT owner FROM schedules")
victim=$a; case $owner in *-$b-*) victim=$b ;; esac
survivor=$(( victim == a ? b : a ))
t0=$(date +%s.%N)
kill -KILL -- -"$victim"
until [ "$(psql "$url" -At -c "SELECT COUNT(*) FROM jobs WHERE attempts = 2 AND status = 'succeeded'")" = 1 ]; do sleep 0.05; done
t1=$(date +%s.%N)
kill -KILL -- -"$survivor" 2>/dev/null || true
echo "takeover after SIGKILL (lease ${LEASE:-10s}): $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f s", b - a }')"
