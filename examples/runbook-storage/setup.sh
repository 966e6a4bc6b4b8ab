#!/usr/bin/env bash
# Two sandbox buckets (directories), the application's config directory and
# an application server to restart.
scenario=runbook-storage
source ../lib.sh
stop_all
rm -rf "$work/primary" "$work/backup" "$work/config"
app=$(free_port)
start_app "$app" app
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[s3.primary]
path = "primary"
access = ["read", "list", "write", "delete"]
sandbox = true

[s3.backup]
path = "backup"
access = ["read", "list", "write"]
sandbox = true

[s3.config]
path = "config"
access = ["write"]

[http]
allow = ["http://127.0.0.1:$app/"]

[exec.restart-app]
program = "$fixtures/restart-app.sh"
leaves-running = true        # the application server it starts outlives it
args = ["$app", "app"]
timeout = "20s"
TOML
state health-url "http://127.0.0.1:$app/health"
state restart-args "$app app"
