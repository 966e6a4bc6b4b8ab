//! HTTP health checks with retries: one dropped packet must not declare a
//! disaster, and a recovered service must answer several times in a row
//! before it is called healthy if you ask for that.
//!
//! ```no_run
//! use drhost_plugin::health::HealthCheck;
//! use drhost_plugin::scenario::seconds;
//! use drhost_plugin::{Outcome, finding};
//!
//! let check = HealthCheck::new("http://app.internal:8080/health")
//!     .attempts(3)
//!     .interval(seconds(1))
//!     .body_contains("ok");
//! let outcome = match check.run() {
//!     Ok(h) => Outcome::Ok(h.findings()),
//!     Err(sick) => Outcome::Detected(sick.findings()),
//! };
//! ```

use crate::scenario::seconds;
use crate::{Finding, clock, finding, http, warn};
use std::fmt;
use std::time::Duration;

/// A health check under construction; see [`HealthCheck::run`].
#[derive(Debug, Clone)]
pub struct HealthCheck {
    url: String,
    attempts: u32,
    interval: Duration,
    statuses: (u16, u16),
    body_contains: Option<String>,
}

/// The endpoint answered as expected.
#[derive(Debug, Clone)]
pub struct Healthy {
    pub url: String,
    pub status: u16,
    /// Round trip of the successful attempt.
    pub latency_ms: u64,
    /// Which attempt succeeded (1 = the first).
    pub attempts: u32,
}

/// Every attempt failed.
#[derive(Debug, Clone)]
pub struct Unhealthy {
    pub url: String,
    /// One line per attempt, oldest first.
    pub errors: Vec<String>,
}

impl HealthCheck {
    /// Checks `url` (which the policy's `[http] allow` must list): three
    /// attempts a second apart, any 2xx status.
    pub fn new(url: &str) -> Self {
        HealthCheck {
            url: url.into(),
            attempts: 3,
            interval: seconds(1),
            statuses: (200, 299),
            body_contains: None,
        }
    }

    /// How many times to try before calling the endpoint unhealthy (at least 1).
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// Pause between attempts.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// The statuses that count as healthy, inclusive (default 200..=299).
    pub fn statuses(mut self, low: u16, high: u16) -> Self {
        self.statuses = (low, high);
        self
    }

    /// The body must contain this text as well.
    pub fn body_contains(mut self, text: &str) -> Self {
        self.body_contains = Some(text.into());
        self
    }

    /// Why one response is not healthy, or `None` when it is.
    pub fn judge(&self, status: u16, body: &[u8]) -> Option<String> {
        let (low, high) = self.statuses;
        if !(low..=high).contains(&status) {
            return Some(format!("{} answered HTTP {status}", self.url));
        }
        match &self.body_contains {
            Some(want) if !String::from_utf8_lossy(body).contains(want.as_str()) => Some(format!(
                "{} answered HTTP {status} without {want:?} in its body",
                self.url
            )),
            _ => None,
        }
    }

    /// Probes until one attempt is healthy or all have failed. Stops early
    /// when the step's budget would run out during the next pause.
    pub fn run(&self) -> Result<Healthy, Unhealthy> {
        let pause = u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX);
        let mut errors = Vec::new();
        for attempt in 1..=self.attempts {
            let start = clock::now_ms();
            let error = match http::get(&self.url) {
                Ok(r) => match self.judge(r.status, &r.body) {
                    None => {
                        return Ok(Healthy {
                            url: self.url.clone(),
                            status: r.status,
                            latency_ms: clock::now_ms().saturating_sub(start),
                            attempts: attempt,
                        });
                    }
                    Some(why) => why,
                },
                Err(e) => e,
            };
            warn(&format!(
                "health check {attempt}/{}: {error}",
                self.attempts
            ));
            errors.push(error);
            if attempt == self.attempts || clock::step_remaining_ms() <= u64::from(pause) + 1_000 {
                break;
            }
            clock::sleep_ms(pause);
        }
        Err(Unhealthy {
            url: self.url.clone(),
            errors,
        })
    }
}

impl Healthy {
    /// `url`, `status`, `latency-ms`, `attempts`.
    pub fn findings(&self) -> Vec<Finding> {
        vec![
            finding("url", &self.url),
            finding("status", self.status),
            finding("latency-ms", self.latency_ms),
            finding("attempts", self.attempts),
        ]
    }
}

impl Unhealthy {
    /// `url`, `error` (the last one), `attempts`.
    pub fn findings(&self) -> Vec<Finding> {
        vec![
            finding("url", &self.url),
            finding("error", self.errors.last().map_or("", String::as_str)),
            finding("attempts", self.errors.len()),
        ]
    }
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unhealthy after {} attempts: {}",
            self.url,
            self.errors.len(),
            self.errors.join("; ")
        )
    }
}

impl From<Unhealthy> for crate::error::StepError {
    fn from(u: Unhealthy) -> Self {
        crate::error::StepError::Message(u.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_status_and_body() {
        let c = HealthCheck::new("http://x/health").body_contains("ok");
        assert_eq!(c.judge(200, b"all ok"), None);
        assert_eq!(
            c.judge(503, b"ok").as_deref(),
            Some("http://x/health answered HTTP 503")
        );
        assert!(
            c.judge(200, b"degraded")
                .unwrap()
                .contains("without \"ok\"")
        );
        let c = HealthCheck::new("http://x/").statuses(200, 204);
        assert!(c.judge(204, b"").is_none());
        assert!(c.judge(206, b"").is_some());
    }
}
