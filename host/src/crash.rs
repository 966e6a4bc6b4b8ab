//! Crash points, for the tests that kill drhost in the middle of a
//! multi-step operation and check that nothing is lost or half done.
//!
//! `DRHOST_CRASH_AT=<name>:<n>` makes the process kill itself with SIGKILL
//! (no destructor, no flush: as `kill -9` would) when it reaches the `n`-th
//! crash point called `name` (counting from 1). A test raises `n` until the
//! operation completes, so every point is tried. Debug builds only: a
//! release binary has no crash points.

/// Marks a point where a crash must leave a recoverable state.
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static REACHED: AtomicU32 = AtomicU32::new(0);
    let Ok(at) = std::env::var("DRHOST_CRASH_AT") else {
        return;
    };
    let Some((want, n)) = at.rsplit_once(':') else {
        return;
    };
    if want != name {
        return;
    }
    let reached = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if n.parse() == Ok(reached) {
        eprintln!("drhost: crash point {name}:{reached}, killing myself");
        // SAFETY: sends a signal to this process; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
