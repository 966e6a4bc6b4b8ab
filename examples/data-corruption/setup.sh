#!/usr/bin/env bash
# A private MariaDB with binary logging, a database for the orders, and a
# backup configuration with a local target.
scenario=data-corruption
source ../lib.sh
stop_all
rm -rf "$work/backups"
port=$(free_port)
start_mariadb binlog "$port" --server-id=1 --log-bin=binlog --binlog-format=ROW
sql "$port" "CREATE DATABASE shop"
read_account "$port"
{ backup_keys; cat <<TOML
[sources.app]
kind = "mariadb"
url = "mysql://root@127.0.0.1:$port/shop"

[targets.local]
path = "backups"
TOML
} >"$work/drhost.toml"
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[db.app]
url = "mysql://root@127.0.0.1:$port/shop"
read-url = "mysql://drhost_ro:drhost-ro@127.0.0.1:$port/shop"   # what detect reads through
access = "read-write"
sandbox = true
write-phases = ["inject", "contain", "recover", "verify"]   # verify lifts read-only once the data validates

[db.app.invariants]           # data-validation queries: each counts violating rows
no-negative-amounts = "SELECT COUNT(*) FROM orders WHERE amount < 0"
amounts-below-a-million = "SELECT COUNT(*) FROM orders WHERE amount >= 1000000"

[backup.app]
access = ["create", "list", "verify", "restore"]
restore-to = ["app"]
sandbox = true
TOML
