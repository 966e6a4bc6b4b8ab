#!/usr/bin/env bash
# A private MariaDB with the application's database and a standby, a proxy
# in front of the application's (the drill cuts it), backups, and an
# application server.
scenario=runbook-database
source ../lib.sh
stop_all
rm -rf "$work/backups" "$work/config"
port=$(free_port) control=$(free_port) proxy=$(free_port) app=$(free_port)
start_mariadb db "$port"
sql "$port" "CREATE DATABASE app; CREATE DATABASE app_standby"
read_account "$port"
bg proxy python3 "$fixtures/tcpproxy.py" "$control" "$proxy" "$port"
wait_http "http://127.0.0.1:$control/health"
start_app "$app" app
{ backup_keys; cat <<TOML
[sources.app]
kind = "mariadb"
url = "mysql://root@127.0.0.1:$port/app"

[sources.standby]
kind = "mariadb"
url = "mysql://root@127.0.0.1:$port/app_standby"

[targets.local]
path = "backups"
TOML
} >"$work/drhost.toml"
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[db.app]
url = "mysql://root@127.0.0.1:$proxy/app"
read-url = "mysql://drhost_ro:drhost-ro@127.0.0.1:$proxy/app"   # what detect and verify read through
access = "read-write"
sandbox = true

[db.standby]
url = "mysql://root@127.0.0.1:$port/app_standby"
read-url = "mysql://drhost_ro:drhost-ro@127.0.0.1:$port/app_standby"
access = "read-write"

[backup.app]
access = ["create", "list", "verify", "restore"]
restore-to = ["standby"]
sandbox = true

[s3.config]
path = "config"
access = ["write"]

[http]
allow = ["http://127.0.0.1:$control/", "http://127.0.0.1:$app/"]
sandbox = ["http://127.0.0.1:$control/"]

[exec.restart-app]
program = "$fixtures/restart-app.sh"
leaves-running = true        # the application server it starts outlives it
args = ["$app", "app"]
timeout = "20s"
TOML
state primary-control "http://127.0.0.1:$control"
state health-url "http://127.0.0.1:$app/health"
state restart-args "$app app"
