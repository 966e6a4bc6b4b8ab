//! Waiting for a condition within the step's time budget: a replica to
//! catch up, a service to answer, a DNS record to change.
//!
//! ```no_run
//! use drhost_plugin::wait::Wait;
//! use drhost_plugin::scenario::seconds;
//! use drhost_plugin::error::{Context, StepError};
//! use drhost_plugin::db;
//!
//! // Poll every 2 s until the replica has applied everything, for at most
//! // 3 minutes or what is left of the step's budget, whichever is shorter.
//! let caught_up = Wait::new("the replica to catch up")
//!     .every(seconds(2))
//!     .at_most(seconds(180))
//!     .until(|| {
//!         let rows = db::query("replica", "SELECT 1", &[]).during("asking the replica")?;
//!         Ok::<_, StepError>((!rows.rows.is_empty()).then_some(()))
//!     })?;
//! println!("after {} checks, {} ms", caught_up.attempts, caught_up.elapsed_ms);
//! # Ok::<(), StepError>(())
//! ```

use crate::clock;
use crate::error::StepError;
use std::time::Duration;

/// What was waited for, and how long it took.
#[derive(Debug, Clone)]
pub struct Waited<T> {
    pub value: T,
    /// Number of checks made, the successful one included.
    pub attempts: u32,
    pub elapsed_ms: u64,
}

/// A wait under construction; see [`Wait::until`].
#[derive(Debug, Clone)]
pub struct Wait {
    what: String,
    every_ms: u64,
    at_most_ms: Option<u64>,
}

/// Time left before the step is stopped is kept free of waiting, so a step
/// that gives up still has time to report why.
const MARGIN_MS: u64 = 1_000;

impl Wait {
    /// Waits for `what` (used in the error message), checking once a second.
    pub fn new(what: &str) -> Self {
        Wait {
            what: what.into(),
            every_ms: 1_000,
            at_most_ms: None,
        }
    }

    /// Time between checks.
    pub fn every(mut self, interval: Duration) -> Self {
        self.every_ms = interval.as_millis().clamp(1, u32::MAX as u128) as u64;
        self
    }

    /// Gives up after this long even when the step's budget has more.
    pub fn at_most(mut self, limit: Duration) -> Self {
        self.at_most_ms = Some(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Calls `check` until it returns `Some`, sleeping between checks. An
    /// error from `check` ends the wait at once; return `Ok(None)` for
    /// "not yet". Fails when the limit, or the step's budget less a second,
    /// would run out before the next check.
    pub fn until<T, E: Into<StepError>>(
        &self,
        check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Waited<T>, StepError> {
        self.poll(&mut HostClock, check)
    }

    fn poll<T, E: Into<StepError>>(
        &self,
        clock: &mut impl Ticks,
        mut check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Waited<T>, StepError> {
        let start = clock.now_ms();
        let mut attempts = 0;
        loop {
            attempts += 1;
            if let Some(value) = check().map_err(Into::into)? {
                return Ok(Waited {
                    value,
                    attempts,
                    elapsed_ms: clock.now_ms().saturating_sub(start),
                });
            }
            let elapsed = clock.now_ms().saturating_sub(start);
            let budget_left = clock.step_remaining_ms().saturating_sub(MARGIN_MS);
            let limit_left = self
                .at_most_ms
                .map_or(u64::MAX, |l| l.saturating_sub(elapsed));
            if self.every_ms > budget_left.min(limit_left) {
                let why = if limit_left < budget_left {
                    "the wait's limit is reached"
                } else {
                    "the step's budget is nearly used up"
                };
                return Err(StepError::Message(format!(
                    "gave up waiting for {} after {attempts} checks in {elapsed} ms: {why}",
                    self.what
                )));
            }
            clock.sleep_ms(self.every_ms);
        }
    }
}

/// The clock a wait runs on: the host's, or a fake one in tests.
trait Ticks {
    fn now_ms(&self) -> u64;
    fn step_remaining_ms(&self) -> u64;
    fn sleep_ms(&mut self, ms: u64);
}

struct HostClock;

impl Ticks for HostClock {
    fn now_ms(&self) -> u64 {
        clock::now_ms()
    }
    fn step_remaining_ms(&self) -> u64 {
        clock::step_remaining_ms()
    }
    fn sleep_ms(&mut self, ms: u64) {
        clock::sleep_ms(u32::try_from(ms).unwrap_or(u32::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::seconds;

    /// A step with `budget` ms that sleeps instantly.
    struct Fake {
        now: u64,
        budget: u64,
    }

    impl Ticks for Fake {
        fn now_ms(&self) -> u64 {
            self.now
        }
        fn step_remaining_ms(&self) -> u64 {
            self.budget.saturating_sub(self.now)
        }
        fn sleep_ms(&mut self, ms: u64) {
            self.now += ms;
        }
    }

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut clock = Fake {
            now: 0,
            budget: 60_000,
        };
        let mut n = 0;
        let w = Wait::new("three")
            .every(seconds(2))
            .poll(&mut clock, || {
                n += 1;
                Ok::<_, StepError>((n == 3).then_some("ready"))
            })
            .unwrap();
        assert_eq!((w.value, w.attempts, w.elapsed_ms), ("ready", 3, 4_000));
    }

    #[test]
    fn gives_up_before_the_budget_runs_out() {
        let mut clock = Fake {
            now: 0,
            budget: 10_000,
        };
        let e = Wait::new("never")
            .every(seconds(2))
            .poll(&mut clock, || Ok::<Option<()>, StepError>(None))
            .unwrap_err();
        // Checks at 0, 2, 4, 6 and 8 s; sleeping on to 10 s would eat the margin.
        assert!(e.to_string().contains("after 5 checks"), "{e}");
        assert!(e.to_string().contains("budget is nearly used up"), "{e}");
        assert!(clock.now < 10_000);
    }

    #[test]
    fn honours_its_own_limit() {
        let mut clock = Fake {
            now: 0,
            budget: 600_000,
        };
        let e = Wait::new("never")
            .every(seconds(1))
            .at_most(seconds(3))
            .poll(&mut clock, || Ok::<Option<()>, StepError>(None))
            .unwrap_err();
        assert!(e.to_string().contains("limit is reached"), "{e}");
        assert_eq!(clock.now, 3_000);
    }

    #[test]
    fn an_error_ends_the_wait_at_once() {
        let mut clock = Fake {
            now: 0,
            budget: 60_000,
        };
        let e = Wait::new("x")
            .poll(&mut clock, || Err::<Option<()>, _>("broken"))
            .unwrap_err();
        assert_eq!(e.to_string(), "broken");
        assert_eq!(clock.now, 0);
    }
}
