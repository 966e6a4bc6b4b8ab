//! Time formatting shared by the audit log and reports.

use chrono::{SecondsFormat, Utc};

/// Now, as RFC 3339 UTC with microseconds: `2026-11-27T03:39:25.123456Z`.
pub fn rfc3339_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// A run id that sorts by time: `20261127T033925Z-1a2b3c`.
pub fn new_run_id() -> String {
    let now = Utc::now();
    let nanos = now.timestamp_subsec_nanos();
    format!(
        "{}-{:06x}",
        now.format("%Y%m%dT%H%M%SZ"),
        (nanos ^ std::process::id().rotate_left(16)) & 0xff_ffff
    )
}
