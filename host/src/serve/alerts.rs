//! Alerts: a backup failed, a verification failed, a recovery point beyond
//! its target, a test not run within its window. Each condition is announced
//! when it starts, again at most once per `repeat-after` while it holds, and
//! once more when it clears — as a log line and a JSON POST to each webhook.

use super::metrics::{ProcessCounters, Snapshot};
use super::store::{AlertRow, StateError, StateStore};
use crate::backup::config::Config;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// One condition as evaluated now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// `backup-failed:shop`, `rpo-exceeded:shop`, `test-not-run:weekly-restore`, …
    pub key: String,
    pub firing: bool,
    pub message: String,
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

/// Every condition drhost watches, firing or not.
pub fn evaluate(s: &Snapshot, config: &Config) -> Vec<Condition> {
    let mut out = Vec::new();
    for (name, st) in &s.sources {
        out.push(Condition {
            key: format!("backup-failed:{name}"),
            firing: st.last_backup_ok == Some(false),
            message: if st.last_backup_ok == Some(false) {
                format!(
                    "the latest backup of {name} failed: {}",
                    st.last_backup_error
                )
            } else {
                format!("backups of {name} succeed again")
            },
        });
        out.push(Condition {
            key: format!("verification-failed:{name}"),
            firing: st.last_verification_ok == Some(false),
            message: if st.last_verification_ok == Some(false) {
                format!(
                    "the latest verification of a backup of {name} failed: {}",
                    st.last_verification_failed
                )
            } else {
                format!("verifications of {name} pass again")
            },
        });
        if st.scheduled {
            // Without any verified backup, the point is as old as the schedule.
            let since = config
                .schedule
                .iter()
                .filter(|(_, sc)| sc.source.as_deref() == Some(name.as_str()))
                .filter_map(|(n, _)| s.schedule_since_ms.get(n))
                .min()
                .copied();
            let point = st
                .recovery_point_s
                .or_else(|| since.map(|t| (s.now_ms - t).max(0) as f64 / 1000.0));
            let firing = point.is_some_and(|p| p > st.recovery_point_target_s);
            out.push(Condition {
                key: format!("rpo-exceeded:{name}"),
                firing,
                message: match (firing, st.recovery_point_s) {
                    (true, Some(p)) => format!(
                        "recovery point of {name} is {} old (target {}): the newest verified backup is too old",
                        secs(p),
                        secs(st.recovery_point_target_s)
                    ),
                    (true, None) => format!(
                        "{name} has no verified backup, and has been scheduled for {} (target {})",
                        secs(point.unwrap_or(0.0)),
                        secs(st.recovery_point_target_s)
                    ),
                    (false, _) => format!(
                        "recovery point of {name} is within its target ({}) again",
                        secs(st.recovery_point_target_s)
                    ),
                },
            });
        }
    }
    for (name, sc) in &config.schedule {
        let Some(within) = &sc.alert_if_not_run_within else {
            continue;
        };
        let limit = within.0.as_millis() as i64;
        let last = s.last_success_ms.get(name).copied().flatten();
        let reference = last.or_else(|| s.schedule_since_ms.get(name).copied());
        let firing = reference.is_some_and(|t| s.now_ms - t > limit);
        out.push(Condition {
            key: format!("test-not-run:{name}"),
            firing,
            message: if firing {
                match last {
                    Some(t) => format!(
                        "{name} ({}) last succeeded {} ago, more than {}",
                        sc.job.name(),
                        secs((s.now_ms - t) as f64 / 1000.0),
                        secs(within.0.as_secs_f64())
                    ),
                    None => format!(
                        "{name} ({}) has not succeeded since it was scheduled, {} ago",
                        sc.job.name(),
                        secs((s.now_ms - reference.unwrap_or(s.now_ms)) as f64 / 1000.0)
                    ),
                }
            } else {
                format!(
                    "{name} ({}) has succeeded within {}",
                    sc.job.name(),
                    secs(within.0.as_secs_f64())
                )
            },
        });
    }
    out
}

/// The JSON each webhook receives.
#[derive(Debug, Serialize)]
pub struct Notice<'a> {
    /// "alert" or "resolved".
    pub status: &'a str,
    pub condition: &'a str,
    /// The part before the colon: backup-failed, verification-failed, rpo-exceeded, test-not-run.
    pub kind: &'a str,
    /// The source or schedule concerned.
    pub subject: &'a str,
    pub message: &'a str,
    /// When the condition began (RFC 3339).
    pub since: String,
    pub at: String,
    pub host: &'a str,
}

pub struct Alerter {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    webhooks: Vec<String>,
    repeat_ms: i64,
    host: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl Alerter {
    pub fn new(config: &Config, host: String) -> Result<Self, String> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("TLS roots for webhooks: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Alerter {
            client: Client::builder(TokioExecutor::new()).build(https),
            webhooks: config.alerts.webhooks.clone(),
            repeat_ms: config.alerts.repeat_after.0.as_millis() as i64,
            host,
        })
    }

    /// Evaluates, records transitions, announces the ones this host won.
    pub async fn check(
        &self,
        store: &StateStore,
        snapshot: &Snapshot,
        config: &Config,
        counters: &ProcessCounters,
    ) -> Result<Vec<AlertRow>, StateError> {
        let mut announced = Vec::new();
        for c in evaluate(snapshot, config) {
            if let Some(row) = store
                .alert_transition(
                    &c.key,
                    c.firing,
                    &c.message,
                    snapshot.now_ms,
                    self.repeat_ms,
                )
                .await?
            {
                self.announce(&row, snapshot.now_ms, counters).await;
                announced.push(row);
            }
        }
        Ok(announced)
    }

    async fn announce(&self, row: &AlertRow, now_ms: i64, counters: &ProcessCounters) {
        let status = if row.firing { "alert" } else { "resolved" };
        let (kind, subject) = row
            .condition
            .split_once(':')
            .unwrap_or((&row.condition, ""));
        if row.firing {
            tracing::error!(condition = %row.condition, "ALERT {}", row.message);
        } else {
            tracing::info!(condition = %row.condition, "RESOLVED {}", row.message);
        }
        counters.alerts_sent.fetch_add(1, Relaxed);
        let notice = Notice {
            status,
            condition: &row.condition,
            kind,
            subject,
            message: &row.message,
            since: rfc3339(row.since_ms),
            at: rfc3339(now_ms),
            host: &self.host,
        };
        let Ok(body) = serde_json::to_vec(&notice) else {
            return;
        };
        for url in &self.webhooks {
            if let Err(e) = self.post(url, body.clone()).await {
                counters.webhook_failures.fetch_add(1, Relaxed);
                tracing::warn!("webhook {url}: {e}");
            }
        }
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Result<(), String> {
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("drhost/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }
}
