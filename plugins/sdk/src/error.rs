//! Errors inside a step, and turning a step's result into an [`Outcome`].
//!
//! Write a step as a function returning [`StepResult`], attach what was
//! being done to each fallible call with [`Context::during`], and let
//! [`outcome`] turn an error into `Outcome::Failed` with one readable line:
//!
//! ```
//! use drhost_plugin::error::{Context, StepError, StepResult, outcome};
//! use drhost_plugin::{Outcome, finding, types};
//!
//! fn count(rows: Result<u64, types::Error>) -> StepResult {
//!     let n = rows.during("counting orders")?;
//!     Ok(Outcome::Ok(vec![finding("orders", n)]))
//! }
//!
//! let denied = Err(types::Error::Denied("db.orders is not granted".into()));
//! match outcome(count(denied)) {
//!     Outcome::Failed(why) => assert_eq!(why, "counting orders: denied: db.orders is not granted"),
//!     _ => unreachable!(),
//! }
//! let e: StepError = "replica lag too high".into();
//! assert_eq!(e.to_string(), "replica lag too high");
//! ```

use crate::{Outcome, describe, types};
use std::fmt;

/// Why a step could not do its work.
#[derive(Debug, Clone)]
pub enum StepError {
    /// A capability call failed; `during` says what the step was doing.
    Capability { during: String, error: types::Error },
    /// Anything else, already phrased for an operator.
    Message(String),
}

/// What a step function returns; see [`outcome`].
pub type StepResult = Result<Outcome, StepError>;

impl StepError {
    /// The capability error, when a capability call failed.
    pub fn capability(&self) -> Option<&types::Error> {
        match self {
            StepError::Capability { error, .. } => Some(error),
            StepError::Message(_) => None,
        }
    }

    /// What the step was doing when it failed (empty for a plain message).
    pub fn during(&self) -> &str {
        match self {
            StepError::Capability { during, .. } => during,
            StepError::Message(_) => "",
        }
    }

    /// True when the policy refused the call.
    pub fn is_denied(&self) -> bool {
        matches!(self.capability(), Some(types::Error::Denied(_)))
    }

    /// True when the backend could not be reached or failed: often the
    /// disaster itself rather than a mistake in the plugin.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.capability(), Some(types::Error::Unavailable(_)))
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Capability { during, error } => write!(f, "{during}: {}", describe(error)),
            StepError::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StepError {}

impl From<String> for StepError {
    fn from(m: String) -> Self {
        StepError::Message(m)
    }
}

impl From<&str> for StepError {
    fn from(m: &str) -> Self {
        StepError::Message(m.into())
    }
}

/// Says what a step was doing when a call failed.
pub trait Context<T> {
    /// Wraps the error with `what`, e.g. `"listing the secondary bucket"`.
    fn during(self, what: impl Into<String>) -> Result<T, StepError>;
}

impl<T> Context<T> for Result<T, types::Error> {
    fn during(self, what: impl Into<String>) -> Result<T, StepError> {
        self.map_err(|error| StepError::Capability {
            during: what.into(),
            error,
        })
    }
}

/// The HTTP helpers report errors as text.
impl<T> Context<T> for Result<T, String> {
    fn during(self, what: impl Into<String>) -> Result<T, StepError> {
        self.map_err(|m| StepError::Message(format!("{}: {m}", what.into())))
    }
}

/// The step's outcome: its own on success, `Failed` with the error's text
/// otherwise.
pub fn outcome(result: StepResult) -> Outcome {
    result.unwrap_or_else(|e| Outcome::Failed(e.to_string()))
}
