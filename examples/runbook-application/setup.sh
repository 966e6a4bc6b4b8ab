#!/usr/bin/env bash
# An application server, its log file, and the allow-listed commands.
scenario=runbook-application
source ../lib.sh
stop_all
app=$(free_port)
start_app "$app" app
printf 'INFO started\nERROR upstream timeout\nINFO request ok\n' >"$work/app.log"
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[http]
allow = ["http://127.0.0.1:$app/"]
sandbox = ["http://127.0.0.1:$app/"]

[exec.show-logs]
read-only = true                # tail only reads: usable from steps that change nothing
program = "/usr/bin/tail"
args = ["-n", "100", "$work/app.log"]

[exec.restart-app]
program = "$fixtures/restart-app.sh"
leaves-running = true        # the application server it starts outlives it
args = ["$app", "app"]
timeout = "20s"
TOML
state app-url "http://127.0.0.1:$app"
state restart-args "$app app"
state log-args "-n 100 $work/app.log"
