//! How failed attempts are retried: a small value type shared by jobs and the queue
//! defaults, kept apart so that neither module needs the other for it.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a failed attempt is retried: up to `max_attempts` tries in all, waiting
/// `min(backoff_cap, backoff_base · 2^(n-1))` after failure `n`, shortened by up to
/// `jitter` (a fraction) at random so that retries of many jobs spread out.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, counting the first; 1 means no retry.
    pub max_attempts: u32,
    /// Wait after the first failure.
    pub backoff_base: Duration,
    /// Longest wait.
    pub backoff_cap: Duration,
    /// Fraction (0..=1) of the wait that may be taken off at random.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Checks ranges; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.max_attempts > 1000 {
            return Err(format!("max_attempts {} is above 1000", self.max_attempts));
        }
        if !self.jitter.is_finite() || !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!("jitter {} is not between 0 and 1", self.jitter));
        }
        if self.backoff_cap < self.backoff_base {
            return Err("backoff_cap is shorter than backoff_base".into());
        }
        Ok(())
    }

    /// The wait before the retry that follows failure number `failures` (1-based).
    /// `unit` is a uniform random number in [0, 1) supplied by the caller.
    pub fn backoff(&self, failures: u32, unit: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(63);
        let factor = 1u64 << exponent;
        let base_ms = u64::try_from(self.backoff_base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.backoff_cap.as_millis()).unwrap_or(u64::MAX);
        let wait_ms = base_ms.saturating_mul(factor).min(cap_ms);
        let cut = (wait_ms as f64 * self.jitter * unit.clamp(0.0, 1.0)) as u64;
        Duration::from_millis(wait_ms - cut.min(wait_ms))
    }
}
