#!/usr/bin/env bash
# A private MariaDB primary and its replica, a proxy in front of the primary
# (the drill cuts it), a standby database and a backup configuration.
scenario=db-failover
source ../lib.sh
stop_all
rm -rf "$work/backups" "$work/config"
pport=$(free_port) rport=$(free_port) control=$(free_port) proxy=$(free_port)
start_mariadb primary "$pport" --server-id=11 --log-bin=binlog --binlog-format=ROW
start_mariadb replica "$rport" --server-id=12 --log-bin=binlog --binlog-format=ROW --log-slave-updates --read-only=ON
sql "$rport" "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$pport, MASTER_USER='root',
    MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos; START SLAVE"
read_account "$pport"        # replicated, like the database
sql "$pport" "CREATE DATABASE app"
for _ in $(seq 1 200); do
    [ "$(mariadb --no-defaults -h 127.0.0.1 -P "$rport" -u root -N -e "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'app'")" = 1 ] && break
    sleep 0.05
done
sql "$rport" "SET SESSION sql_log_bin = 0; CREATE DATABASE app_standby"
bg proxy python3 "$fixtures/tcpproxy.py" "$control" "$proxy" "$pport"
wait_http "http://127.0.0.1:$control/health"
{ backup_keys; cat <<TOML
[sources.app]
kind = "mariadb"
url = "mysql://root@127.0.0.1:$pport/app"

[sources.standby]
kind = "mariadb"
url = "mysql://root@127.0.0.1:$rport/app_standby"

[targets.local]
path = "backups"
TOML
} >"$work/drhost.toml"
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[db.primary]                  # what the application uses: through the proxy
url = "mysql://root@127.0.0.1:$proxy/app"
read-url = "mysql://drhost_ro:drhost-ro@127.0.0.1:$proxy/app"   # what detect and verify read through
access = "read-write"
sandbox = true

[db.replica]
url = "mysql://root@127.0.0.1:$rport/app"
read-url = "mysql://drhost_ro:drhost-ro@127.0.0.1:$rport/app"
access = "read-write"         # promotion stops replication and lifts read-only
sandbox = true

[db.standby]
url = "mysql://root@127.0.0.1:$rport/app_standby"
read-url = "mysql://drhost_ro:drhost-ro@127.0.0.1:$rport/app_standby"
access = "read-write"

[backup.app]
access = ["list", "verify", "restore"]
restore-to = ["standby"]

[s3.config]                   # the application's configuration: database.json
path = "config"
access = ["write"]

[http]
allow = ["http://127.0.0.1:$control/"]
sandbox = ["http://127.0.0.1:$control/"]
TOML
state primary-control "http://127.0.0.1:$control"
