#!/usr/bin/env bash
# Two network paths (endpoints on free ports) and a DNS provider API
# stand-in whose record points at the primary path.
scenario=network-failover
source ../lib.sh
stop_all
primary=$(free_port) backup=$(free_port) dns=$(free_port)
start_app "$primary" primary
start_app "$backup" backup
bg dnsapi python3 "$fixtures/dnsapi.py" "$dns" "app.example.com=localhost:$primary"
wait_http "http://127.0.0.1:$dns/records/app.example.com"
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[net]
allow = ["localhost:$primary", "localhost:$backup"]
sandbox = true                  # the inject step checks that the outage took effect

[http]
allow = ["http://127.0.0.1:$dns/", "http://localhost:$primary/", "http://localhost:$backup/"]
addresses = ["127.0.0.0/8"]     # localhost resolves to loopback
sandbox = ["http://localhost:$primary/"]
write-phases = ["inject", "contain", "recover", "verify"]   # fail-back (verify) points DNS back


[exec.restore-primary]
program = "$fixtures/start-app.sh"
leaves-running = true        # the application server it starts outlives it
args = ["$primary", "primary"]
timeout = "20s"
write-phases = ["recover", "verify"]
TOML
state primary "localhost:$primary"
state backup "localhost:$backup"
state dns-api "http://127.0.0.1:$dns"
state record app.example.com
state restore-args "$primary primary"
