//! Comparing two object listings: which keys of the expected side are
//! missing or different on the other, by size first and then by a sha256
//! the host computes while streaming (no object enters the guest).
//!
//! The pure comparison runs anywhere:
//!
//! ```
//! use drhost_plugin::listing::compare;
//! use drhost_plugin::s3::ObjectInfo;
//!
//! let obj = |key: &str, size| ObjectInfo {
//!     key: key.into(), size, etag: String::new(), last_modified_ms: 0, version_id: None,
//! };
//! let secondary = [obj("a", 1), obj("b", 2), obj("c", 3)];
//! let primary = [obj("a", 1), obj("c", 4), obj("new", 5)];
//! let d = compare(&secondary, &primary);
//! assert_eq!(d.missing, ["b"]);
//! assert_eq!(d.size_differs, ["c"]);
//! assert_eq!(d.same_size, ["a"]);  // only a checksum can tell these apart
//! assert_eq!(d.extra, ["new"]);
//! ```
//!
//! and [`compare_aliases`] does the whole job against two granted aliases:
//!
//! ```no_run
//! use drhost_plugin::listing::compare_aliases;
//!
//! let c = compare_aliases("secondary", "primary", "", &[".drhost-canary/"])?;
//! if !c.is_clean() {
//!     println!("{} missing, {} corrupted", c.missing.len(), c.corrupted.len());
//! }
//! # Ok::<(), drhost_plugin::error::StepError>(())
//! ```

use crate::error::{Context, StepError};
use crate::{list_all, s3};
use std::collections::{BTreeMap, BTreeSet};

/// Keys of one listing compared with another by name and size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// In the expected listing, absent from the actual one.
    pub missing: Vec<String>,
    /// Present in both with different sizes: certainly different.
    pub size_differs: Vec<String>,
    /// Present in both with equal sizes: equal unless their checksums differ.
    pub same_size: Vec<String>,
    /// In the actual listing only.
    pub extra: Vec<String>,
}

/// Compares `actual` against `expected`, in `expected`'s order.
pub fn compare(expected: &[s3::ObjectInfo], actual: &[s3::ObjectInfo]) -> Diff {
    let have: BTreeMap<&str, u64> = actual.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut d = Diff::default();
    for want in expected {
        match have.get(want.key.as_str()) {
            None => d.missing.push(want.key.clone()),
            Some(&size) if size != want.size => d.size_differs.push(want.key.clone()),
            Some(_) => d.same_size.push(want.key.clone()),
        }
    }
    let wanted: BTreeSet<&str> = expected.iter().map(|o| o.key.as_str()).collect();
    d.extra = actual
        .iter()
        .filter(|o| !wanted.contains(o.key.as_str()))
        .map(|o| o.key.clone())
        .collect();
    d
}

/// The result of comparing two aliases' contents.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Keys of the expected side that were compared.
    pub checked: usize,
    pub missing: Vec<String>,
    /// Present on both sides with a different size or sha256.
    pub corrupted: Vec<String>,
    /// Present on the actual side only (not an error: new objects).
    pub extra: Vec<String>,
}

impl Comparison {
    /// Nothing missing, nothing corrupted.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.corrupted.is_empty()
    }

    /// Missing keys, then corrupted ones: what a restore must copy back.
    pub fn damaged(&self) -> impl Iterator<Item = &str> {
        self.missing
            .iter()
            .chain(&self.corrupted)
            .map(String::as_str)
    }
}

/// Compares everything under `prefix` of alias `actual` with alias
/// `expected` (needs `list` and `read` on both), skipping keys that start
/// with any of `ignore`. Calls, in order: list `expected`, list `actual`,
/// then for each equal-sized key a checksum on `actual` and on `expected`.
/// Errors name the alias: "listing primary: unavailable: …".
pub fn compare_aliases(
    expected: &str,
    actual: &str,
    prefix: &str,
    ignore: &[&str],
) -> Result<Comparison, StepError> {
    let keep = |o: &s3::ObjectInfo| !ignore.iter().any(|p| o.key.starts_with(p));
    let want: Vec<_> = list_all(expected, prefix)
        .during(format!("listing {expected}"))?
        .into_iter()
        .filter(keep)
        .collect();
    let have: Vec<_> = list_all(actual, prefix)
        .during(format!("listing {actual}"))?
        .into_iter()
        .filter(keep)
        .collect();
    let diff = compare(&want, &have);
    let differs: BTreeSet<&str> = diff.size_differs.iter().map(String::as_str).collect();
    let same: BTreeSet<&str> = diff.same_size.iter().map(String::as_str).collect();
    let mut corrupted = Vec::new();
    // Keep expected's order so reports and audit logs read top to bottom.
    for key in want.iter().map(|o| &o.key) {
        if differs.contains(key.as_str()) {
            corrupted.push(key.clone());
        } else if same.contains(key.as_str()) {
            let a = s3::checksum(actual, key).during(format!("checksum of {actual}/{key}"))?;
            let b = s3::checksum(expected, key).during(format!("checksum of {expected}/{key}"))?;
            if a != b {
                corrupted.push(key.clone());
            }
        }
    }
    Ok(Comparison {
        checked: want.len(),
        missing: diff.missing,
        corrupted,
        extra: diff.extra,
    })
}
