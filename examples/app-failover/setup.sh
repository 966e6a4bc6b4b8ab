#!/usr/bin/env bash
# Two application servers (blue, green) behind a switch, on free ports; the
# drill policy and the plugin's settings for them.
scenario=app-failover
source ../lib.sh
stop_all
blue=$(free_port) green=$(free_port) switch=$(free_port)
start_app "$blue" blue
start_app "$green" green
bg switch python3 "$fixtures/switch.py" "$switch" "blue=http://127.0.0.1:$blue" "green=http://127.0.0.1:$green"
wait_http "http://127.0.0.1:$switch/active"
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[http]
allow = ["http://127.0.0.1:$blue/", "http://127.0.0.1:$green/", "http://127.0.0.1:$switch/"]
sandbox = ["http://127.0.0.1:$blue/"]      # the inject step may crash the primary only

[exec.restart-app]
program = "$fixtures/start-app.sh"
leaves-running = true        # the application server it starts outlives it
args = ["$blue", "blue"]
timeout = "20s"
TOML
state primary-url "http://127.0.0.1:$blue"
state backup-url "http://127.0.0.1:$green"
state switch-url "http://127.0.0.1:$switch"
state restart-args "$blue blue"
