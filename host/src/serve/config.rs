//! The `drhost serve` parts of `drhost.toml`: `state`, `[serve]`,
//! `[schedule.<name>]`, `[alerts]` and `[objectives]`.

use crate::policy::DurationText;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

/// `[serve]`: the daemon's own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Serve {
    /// Where `/health` and `/metrics` are served.
    pub listen: String,
    /// Time zone of the cron expressions (IANA name), unless a schedule says otherwise.
    pub timezone: String,
    /// How long a claimed job stays ours without a renewal. A host that dies
    /// loses its jobs to another host this long after its last renewal.
    pub lease: DurationText,
    /// The window the rates in `/metrics` are computed over.
    pub window: DurationText,
    /// How long a SIGTERM waits for running jobs before stopping them.
    pub shutdown_grace: DurationText,
    /// A job whose host died is run again at most this many times in all.
    pub max_attempts: u32,
    /// An occurrence claimed later than this after its time counts as missed,
    /// and the catch-up rule decides whether it still runs.
    pub late_after: DurationText,
}

impl Default for Serve {
    fn default() -> Self {
        Serve {
            listen: "127.0.0.1:9464".into(),
            timezone: "UTC".into(),
            lease: DurationText(Duration::from_secs(60)),
            window: DurationText(Duration::from_secs(30 * 86_400)),
            shutdown_grace: DurationText(Duration::from_secs(300)),
            max_attempts: 3,
            late_after: DurationText(Duration::from_secs(60)),
        }
    }
}

/// What a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// `drhost backup create SOURCE --kind KIND`
    Backup,
    /// The checklist on the latest backup of SOURCE and on one older backup
    /// chosen at random.
    Verify,
    /// `drhost backup prune`
    Prune,
    /// A full restore of SOURCE's latest backup into the database of source `to`.
    RestoreTest,
    /// `drhost drill` of the example whose `drill.toml` is `scenario`.
    Drill,
    /// A program (no shell), for hooks the plan names but drhost does not do itself.
    Command,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Verify => "verify",
            JobKind::Prune => "prune",
            JobKind::RestoreTest => "restore-test",
            JobKind::Drill => "drill",
            JobKind::Command => "command",
        }
    }

    /// Tests count towards the plan's "Test Completion Rate".
    pub fn is_test(self) -> bool {
        matches!(
            self,
            JobKind::Verify | JobKind::RestoreTest | JobKind::Drill
        )
    }
}

/// What happens to occurrences missed while no host was running (or while
/// the previous run of the same schedule was still going).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CatchUp {
    /// Run the most recent missed occurrence once; record the older ones as missed.
    #[default]
    Latest,
    /// Record every missed occurrence as missed; wait for the next one.
    None,
}

/// `[schedule.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Schedule {
    /// Cron expression: five fields (minute hour day month weekday), or six
    /// with seconds first.
    pub cron: String,
    pub job: JobKind,
    /// backup, verify, restore-test: the source.
    pub source: Option<String>,
    /// backup: full or incremental.
    pub kind: Option<String>,
    /// restore-test: the source whose database receives the restore (a scratch database).
    pub to: Option<String>,
    /// drill: the example's `drill.toml` (relative to drhost.toml).
    pub scenario: Option<std::path::PathBuf>,
    /// command: program and arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Time zone of `cron`; defaults to `[serve] timezone`.
    pub timezone: Option<String>,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Alert when this schedule has not succeeded for this long (tests: the
    /// plan's weekly restore test wants e.g. "8d").
    pub alert_if_not_run_within: Option<DurationText>,
    /// Stop the job (and record a failure) after this long.
    pub timeout: Option<DurationText>,
}

/// `[alerts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Alerts {
    /// Each alert and recovery notice is POSTed as JSON to every URL.
    pub webhooks: Vec<String>,
    /// A condition that stays true is announced again after this long, not before.
    pub repeat_after: DurationText,
    /// How often conditions are evaluated (also after every job).
    pub check_every: DurationText,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            webhooks: Vec::new(),
            repeat_after: DurationText(Duration::from_secs(3600)),
            check_every: DurationText(Duration::from_secs(60)),
        }
    }
}

/// `[objectives]`: the plan's "Disaster Recovery Metrics" targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Objectives {
    /// Percent.
    pub backup_success_rate: f64,
    /// Percent.
    pub verification_rate: f64,
    pub recovery_time_database: DurationText,
    pub recovery_time_application: DurationText,
    /// Also the RPO each source is alerted against, unless the source sets `rpo`.
    pub recovery_point: DurationText,
    /// Percent.
    pub test_completion_rate: f64,
    /// Per source: a different recovery-point target.
    pub rpo: BTreeMap<String, DurationText>,
}

impl Default for Objectives {
    fn default() -> Self {
        Objectives {
            backup_success_rate: 99.9,
            verification_rate: 100.0,
            recovery_time_database: DurationText(Duration::from_secs(15 * 60)),
            recovery_time_application: DurationText(Duration::from_secs(30 * 60)),
            recovery_point: DurationText(Duration::from_secs(15 * 60)),
            test_completion_rate: 100.0,
            rpo: BTreeMap::new(),
        }
    }
}

impl Objectives {
    pub fn rpo_for(&self, source: &str) -> Duration {
        self.rpo.get(source).unwrap_or(&self.recovery_point).0
    }
}

/// A schedule's cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Timetable {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Timetable {
    pub fn new(expr: &str, tz: &str) -> Result<Self, String> {
        let cron =
            croner::Cron::from_str(expr).map_err(|e| format!("cron expression {expr:?}: {e}"))?;
        let tz = tz.parse::<chrono_tz::Tz>().map_err(|_| {
            format!("unknown time zone {tz:?} (an IANA name such as \"UTC\" or \"Europe/Berlin\")")
        })?;
        let table = Timetable { cron, tz };
        // croner gives up after some years of searching: a date that never
        // comes (`0 0 30 2 *`) is refused now, not silently never run.
        if table.next_after(Utc::now()).is_none() {
            return Err(format!("cron expression {expr:?} never occurs"));
        }
        Ok(table)
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.tz.from_utc_datetime(&whole_second(t).naive_utc());
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| whole_second(d.with_timezone(&Utc)))
    }

    /// The last occurrence at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.tz.from_utc_datetime(&whole_second(t).naive_utc());
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|d| whole_second(d.with_timezone(&Utc)))
    }
}

/// Occurrences are whole seconds (croner keeps the start's fraction with a
/// seconds field; an occurrence's identity must not depend on when we looked).
fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    t.with_nanosecond(0).unwrap_or(t)
}

/// Checks the serve sections against the rest of the configuration.
pub fn validate(config: &crate::backup::config::Config) -> Result<(), String> {
    let serve = &config.serve;
    serve
        .listen
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("[serve] listen {:?}: {e}", serve.listen))?;
    serve.timezone.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "[serve] timezone {:?} is not an IANA time zone",
            serve.timezone
        )
    })?;
    if serve.lease.0 < Duration::from_secs(1) {
        return Err("[serve] lease must be at least 1s".into());
    }
    if serve.max_attempts == 0 {
        return Err("[serve] max-attempts must be at least 1".into());
    }
    for url in &config.alerts.webhooks {
        let u = url::Url::parse(url).map_err(|e| format!("[alerts] webhook {url:?}: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("[alerts] webhook {url:?}: only http and https"));
        }
    }
    for source in config.objectives.rpo.keys() {
        config
            .source(source)
            .map_err(|e| format!("[objectives.rpo] {e}"))?;
    }
    for (name, s) in &config.schedule {
        let here = |m: String| format!("[schedule.{name}] {m}");
        if name.contains('@') || name.is_empty() {
            return Err(here("names may not be empty or contain '@'".into()));
        }
        Timetable::new(&s.cron, s.timezone.as_deref().unwrap_or(&serve.timezone)).map_err(here)?;
        let needs_source = matches!(
            s.job,
            JobKind::Backup | JobKind::Verify | JobKind::RestoreTest
        );
        match (&s.source, needs_source) {
            (Some(src), true) => {
                config.source(src).map_err(here)?;
            }
            (None, true) => {
                return Err(here(format!("job = \"{}\" needs source", s.job.name())));
            }
            (Some(_), false) => {
                return Err(here(format!("job = \"{}\" takes no source", s.job.name())));
            }
            (None, false) => {}
        }
        if let Some(kind) = &s.kind {
            if s.job != JobKind::Backup {
                return Err(here("kind applies to job = \"backup\" only".into()));
            }
            kind.parse::<crate::backup::manifest::Kind>()
                .map_err(|e| here(e.to_string()))?;
        }
        match (s.job, &s.to) {
            (JobKind::RestoreTest, Some(to)) => {
                config.source(to).map_err(here)?;
                if Some(to) == s.source.as_ref() {
                    return Err(here(
                        "to must name a scratch source, not the source backed up".into(),
                    ));
                }
            }
            (JobKind::RestoreTest, None) => {
                return Err(here(
                    "job = \"restore-test\" needs to = \"<scratch source>\"".into(),
                ));
            }
            (_, Some(_)) => return Err(here("to applies to job = \"restore-test\" only".into())),
            _ => {}
        }
        match (s.job, &s.scenario) {
            (JobKind::Drill, Some(p)) => {
                let path = config.resolve(p);
                if !path.is_file() {
                    return Err(here(format!("scenario {} does not exist", path.display())));
                }
            }
            (JobKind::Drill, None) => {
                return Err(here(
                    "job = \"drill\" needs scenario = \"path/drill.toml\"".into(),
                ));
            }
            (_, Some(_)) => return Err(here("scenario applies to job = \"drill\" only".into())),
            _ => {}
        }
        match (s.job, s.command.is_empty()) {
            (JobKind::Command, true) => {
                return Err(here(
                    "job = \"command\" needs command = [\"program\", …]".into(),
                ));
            }
            (JobKind::Command, false) | (_, true) => {}
            (_, false) => return Err(here("command applies to job = \"command\" only".into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn the_daily_full_backup_is_at_two_utc_unless_a_zone_is_given() {
        let t = Timetable::new("0 2 * * *", "UTC").unwrap();
        assert_eq!(
            t.next_after(utc("2026-11-27T02:00:00Z")),
            Some(utc("2026-11-28T02:00:00Z"))
        );
        assert_eq!(
            t.latest_at_or_before(utc("2026-11-27T02:00:00Z")),
            Some(utc("2026-11-27T02:00:00Z"))
        );
        // 02:00 in Berlin is 01:00 UTC in winter.
        let b = Timetable::new("0 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            b.next_after(utc("2026-11-27T00:00:00Z")),
            Some(utc("2026-11-27T01:00:00Z"))
        );
        assert!(Timetable::new("0 2 * * *", "Mars/Base").is_err());
        assert!(Timetable::new("61 * * * *", "UTC").is_err());
        let never = Timetable::new("0 0 30 2 *", "UTC").unwrap_err();
        assert!(never.contains("never occurs"), "{never}");
    }

    #[test]
    fn occurrences_are_whole_seconds_whenever_they_are_looked_for() {
        let t = Timetable::new("* * * * * *", "UTC").unwrap();
        let at = utc("2026-11-27T10:07:10.695Z");
        assert_eq!(t.latest_at_or_before(at), Some(utc("2026-11-27T10:07:10Z")));
        assert_eq!(t.next_after(at), Some(utc("2026-11-27T10:07:11Z")));
    }

    #[test]
    fn every_fifteen_minutes() {
        let t = Timetable::new("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            t.next_after(utc("2026-11-27T10:07:00Z")),
            Some(utc("2026-11-27T10:15:00Z"))
        );
        assert_eq!(
            t.latest_at_or_before(utc("2026-11-27T10:07:00Z")),
            Some(utc("2026-11-27T10:00:00Z"))
        );
    }
}
