#!/usr/bin/env bash
# Backup benchmarks, side by side on one generated MariaDB database, in one run:
#   the plan's runbook pipeline (mariadb-dump | gzip > file, then an upload with
#   boto3) against `drhost backup create` to two targets (S3 + local);
#   `mariadb-dump > /dev/null` (the tool's own limit) against drhost;
#   `gunzip -c | mariadb` against `drhost backup restore`;
#   peak resident memory of drhost (GNU time).
# Usage: scripts/bench-backup.sh [SIZE_MIB]   (default 1024)
# Uses the MariaDB at 127.0.0.1:3306 (root, no password) and starts moto.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
size_mib=${1:-1024}
work="$root/target/bench-backup"
rm -rf "$work" && mkdir -p "$work"
M="mariadb -h 127.0.0.1 -P 3306 -u root"
db="drhost_bench_${size_mib}m"

cargo build --quiet --release -p drhost
drhost="$root/target/release/drhost"

# S3 server (moto 5.1.22), as in scripts/test.sh.
python3 -c 'import moto' 2>/dev/null || python3 -m pip install --quiet 'moto[server]==5.1.22'
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.2; done
endpoint="http://127.0.0.1:$port"
python3 - "$endpoint" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
for b in ("runbook", "drhost"):
    s3.create_bucket(Bucket=b)
PY

# The database: rows of about 360 bytes of dump text each (hashes, text, numbers).
rows=$(( size_mib * 1024 * 1024 / 360 ))
have=$($M -N -e "SELECT COUNT(*) FROM $db.t" 2>/dev/null || echo 0)
if [ "$have" != "$rows" ]; then
    echo "generating $db: $rows rows (about $size_mib MiB of dump)"
    $M -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db;
           CREATE TABLE $db.t (id BIGINT PRIMARY KEY, k CHAR(64), body VARCHAR(255), n INT, at DATETIME)"
    batch=500000
    for (( start=1; start<=rows; start+=batch )); do
        end=$(( start + batch - 1 )); [ $end -gt $rows ] && end=$rows
        $M "$db" -e "INSERT INTO $db.t SELECT seq, SHA2(seq, 256), CONCAT(REPEAT(MD5(seq), 5), ' row ', seq),
               seq % 100000, '2026-01-01' + INTERVAL seq SECOND FROM seq_${start}_to_${end}"
    done
fi
$M -e "DROP DATABASE IF EXISTS ${db}_copy; CREATE DATABASE ${db}_copy; DROP DATABASE IF EXISTS ${db}_runbook; CREATE DATABASE ${db}_runbook"

"$drhost" backup keygen > "$work/key.txt"
recipient=$(sed -n 's/^# public key: //p' "$work/key.txt")
cat > "$work/drhost.toml" <<TOML
[keys]
recipients = ["$recipient"]
identity = "key.txt"
[sources.bench]
kind = "mariadb"
url = "mysql://root@127.0.0.1:3306/$db"
[sources.copy]
kind = "mariadb"
url = "mysql://root@127.0.0.1:3306/${db}_copy"
[targets.primary]
bucket = "drhost"
endpoint = "$endpoint"
path-style = true
region = "us-east-1"
access-key-id = "test"
secret-access-key = "test"
[targets.local]
path = "local"
TOML
# The same without the S3 target: what the pipeline costs on its own.
sed '/^\[targets.primary\]/,/^secret-access-key/d' "$work/drhost.toml" > "$work/local-only.toml"
export DRHOST_CONFIG="$work/drhost.toml" DRHOST_STATE_DIR="$work/state" DRHOST_LOG="warn,sqlx::query=error"

# Runs a command, prints "seconds peak_kib".
measure() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null; cat "$work/time"; }

echo "measuring (size: $size_mib MiB of rows)"
read -r t_dump _ < <(measure bash -c "mariadb-dump -h 127.0.0.1 -u root --single-transaction --quick $db > /dev/null")
# The floor for anything that consumes the dump as a stream: a 64 KiB pipe
# into a process that does nothing with it.
read -r t_pipe _ < <(measure bash -c "mariadb-dump -h 127.0.0.1 -u root --single-transaction --quick $db | cat > /dev/null")
read -r t_runbook _ < <(measure bash -c "
    mariadb-dump -h 127.0.0.1 -u root --single-transaction --quick $db | gzip > '$work/dump.sql.gz'
    python3 -c \"import boto3; boto3.client('s3', endpoint_url='$endpoint', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').upload_file('$work/dump.sql.gz', 'runbook', 'dump.sql.gz')\"")
# CPU seconds of a process so far (user + system), from /proc.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
moto_before=$(cpu $moto_pid)
read -r t_create m_create < <(measure "$drhost" backup create bench)
moto_cpu=$(python3 -c "print(f'{$(cpu $moto_pid) - $moto_before:.2f}')")
read -r t_local _ < <(measure "$drhost" backup --config "$work/local-only.toml" create bench)
read -r t_restore_rb _ < <(measure bash -c "gunzip -c '$work/dump.sql.gz' | mariadb -h 127.0.0.1 -u root ${db}_runbook")
read -r t_restore m_restore < <(measure "$drhost" backup restore latest --source bench --to copy --from local)

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
dump_bytes=$(stat -c %s "$work/dump.sql.gz")
cat <<TABLE

| measurement | seconds | baseline | ratio (target) |
|---|---|---|---|
| drhost backup create → S3 + local | $t_create | runbook dump \| gzip + upload: $t_runbook | $(ratio "$t_create" "$t_runbook") (≤ 0.5) |
| drhost backup create → S3 + local | $t_create | mariadb-dump > /dev/null: $t_dump | $(ratio "$t_create" "$t_dump") (≤ 1.2) |
| mariadb-dump \| cat > /dev/null (a bare pipe) | $t_pipe | mariadb-dump > /dev/null: $t_dump | $(ratio "$t_pipe" "$t_dump") |
| drhost backup create → local only | $t_local | mariadb-dump > /dev/null: $t_dump | $(ratio "$t_local" "$t_dump") |
| drhost backup restore (staged, verified, swapped) | $t_restore | gunzip -c \| mariadb: $t_restore_rb | $(ratio "$t_restore" "$t_restore_rb") (≤ 1.2) |

the S3 test server (moto, on the same two cores) used $moto_cpu CPU seconds receiving the upload
peak resident memory of drhost: create $((m_create / 1024)) MiB, restore $((m_restore / 1024)) MiB (target < 128 MiB)
gzip dump: $dump_bytes bytes
TABLE
"$drhost" backup list bench
