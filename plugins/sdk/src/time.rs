//! Times as people and APIs write them.
//!
//! ```
//! use drhost_plugin::time::rfc3339;
//! assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
//! assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
//! ```

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, with milliseconds:
/// what `backup.restore`'s point-in-time takes.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // The civil date from a day count (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_cross_years_and_leap_days() {
        assert_eq!(
            super::rfc3339(1_795_862_096_789),
            "2026-11-28T10:34:56.789Z"
        );
        assert_eq!(
            super::rfc3339(1_709_164_800_000),
            "2024-02-29T00:00:00.000Z"
        );
        assert_eq!(
            super::rfc3339(1_735_689_599_999),
            "2024-12-31T23:59:59.999Z"
        );
    }
}
