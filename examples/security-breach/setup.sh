#!/usr/bin/env bash
# The embedded defaults: a SQLite database, log and evidence directories,
# and a webhook receiver standing in for the status page, e-mail and SMS.
scenario=security-breach
source ../lib.sh
stop_all
rm -rf "$work/app.db" "$work/logs" "$work/evidence"
sink=$(free_port)
bg sink python3 "$fixtures/sink.py" "$sink"
wait_http "http://127.0.0.1:$sink/received"
cat >"$work/drill.policy.toml" <<TOML
[plugin]
scenario = "$scenario"       # names the state store; the plugin must declare it

[db.app]
url = "sqlite://$work/app.db?mode=rwc"   # sqlx resolves a relative file against the working directory
access = "read-write"
sandbox = true

[s3.logs]
path = "logs"
access = ["read", "list", "write"]
sandbox = true

[s3.evidence]
path = "evidence"
access = ["read", "write"]      # no delete: evidence is only ever added
write-once = true               # and never replaced

[http]
allow = ["http://127.0.0.1:$sink/"]
TOML
state webhooks "status-page http://127.0.0.1:$sink/status-page
email http://127.0.0.1:$sink/email
sms http://127.0.0.1:$sink/sms"
