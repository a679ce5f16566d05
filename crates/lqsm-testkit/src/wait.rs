//! Waiting for something to happen: poll with a deadline, never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// The longest a test waits for something that should happen: generous, because the
/// machines that run the tests are shared and loaded. A wait that needs longer by design
/// (many jobs, a timeout under test) says so with [`eventually_within`].
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a waiting test looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `f` until it answers `Some`, at most [`DEADLINE`]; panics naming `what` after.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_explained(what, DEADLINE, String::new, f)
}

/// [`eventually`] with its own deadline.
pub fn eventually_within<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    eventually_explained(what, deadline, String::new, f)
}

/// [`eventually_within`] whose failure message ends with what `explain` says (the end
/// of the processes' logs, say).
pub fn eventually_explained<T>(
    what: &str,
    deadline: Duration,
    explain: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}\n{}",
            explain()
        );
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`eventually`] for async checks.
pub async fn eventually_async<T, F>(what: &str, f: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    eventually_async_within(what, DEADLINE, f).await
}

/// [`eventually_within`] for async checks.
pub async fn eventually_async_within<T, F>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> F,
) -> T
where
    F: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}
