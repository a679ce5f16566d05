//! Rate limits held by the scheduler: how a limit is written (`100/s` with a burst) and
//! the bucket that enforces it.
//!
//! A bucket is the generic cell rate algorithm (GCRA): one instant per bucket, the
//! *theoretical arrival time* (TAT) of the next start if starts came exactly at the rate.
//! A start is allowed at `t` when `TAT − (burst − 1) × interval ≤ t`, and moves the TAT to
//! `max(TAT, t) + interval`. Any run of starts it allows satisfies, for every window of
//! length `T`, `starts ≤ burst + T / interval`, which is the promise a limit makes. A
//! bucket whose TAT is not after `now` is full: it is then the same as a new one, so it
//! can be dropped without changing any decision (that keeps per-key buckets bounded).

use crate::ids::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

const NANOS_PER_MS: u64 = 1_000_000;

/// Most starts a rate may allow per period.
pub const MAX_RATE_COUNT: u32 = 1_000_000;
/// Largest burst a limit may allow.
pub const MAX_BURST: u32 = 1_000_000;
/// Most per-key limits one queue may set.
pub const MAX_KEY_LIMITS: usize = 16;

/// The period of a rate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RatePeriod {
    /// Per second (`/s`).
    Second,
    /// Per minute (`/m`).
    Minute,
    /// Per hour (`/h`).
    Hour,
}

impl RatePeriod {
    fn nanos(self) -> u64 {
        match self {
            RatePeriod::Second => 1_000_000_000,
            RatePeriod::Minute => 60_000_000_000,
            RatePeriod::Hour => 3_600_000_000_000,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            RatePeriod::Second => "s",
            RatePeriod::Minute => "m",
            RatePeriod::Hour => "h",
        }
    }
}

/// A number of starts per period, written `100/s`, `10/m` or `5/h` (as Celery writes
/// `rate_limit`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    /// Starts allowed per period; 1 to [`MAX_RATE_COUNT`].
    pub count: u32,
    /// The period.
    pub per: RatePeriod,
}

impl Rate {
    /// Reads `<count>/<s|m|h>`, saying what is wrong otherwise.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shape = "write it as a count per period: `100/s`, `10/m` or `5/h`";
        let Some((count, period)) = text.trim().split_once('/') else {
            return Err(format!("`{text}` is not a rate; {shape}"));
        };
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: `{count}` is not a whole number; {shape}"))?;
        if count == 0 || count > MAX_RATE_COUNT {
            return Err(format!(
                "`{text}`: the count must be 1 to {MAX_RATE_COUNT} (to stop a queue, stop it)"
            ));
        }
        let per = match period.trim() {
            "s" | "sec" | "second" => RatePeriod::Second,
            "m" | "min" | "minute" => RatePeriod::Minute,
            "h" | "hour" => RatePeriod::Hour,
            other => return Err(format!("`{text}`: unknown period `{other}`; {shape}")),
        };
        Ok(Self { count, per })
    }

    /// Time between starts at this rate, in nanoseconds, rounded up so that the rate
    /// enforced is never above the rate written.
    pub fn interval_nanos(self) -> u64 {
        self.per.nanos().div_ceil(u64::from(self.count.max(1)))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> String {
        rate.to_string()
    }
}

fn one() -> u32 {
    1
}

/// A limit on starts: a rate, and how many may start at once after a quiet spell.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The sustained rate.
    pub rate: Rate,
    /// Starts allowed back to back after a quiet spell (1 spaces every start evenly, as
    /// Celery does); 1 to [`MAX_BURST`].
    #[serde(default = "one")]
    pub burst: u32,
}

impl RateLimit {
    /// A limit of `rate` with a burst of `burst`.
    pub fn new(rate: Rate, burst: u32) -> Self {
        Self { rate, burst }
    }

    /// A limit as a queue setting gives it: a rate whose count is 0 (`0`, `0/s`) means
    /// no limit, as a running limit of 0 does; an absent burst is 1. The burst's bounds
    /// are checked with the rest of the settings ([`RateLimit::check`]).
    pub fn from_setting(rate: &str, burst: Option<u32>) -> Result<Option<Self>, String> {
        let count = rate.split_once('/').map_or(rate, |(count, _)| count);
        if count.trim().parse::<u64>() == Ok(0) {
            return Ok(None);
        }
        Ok(Some(Self::new(Rate::parse(rate)?, burst.unwrap_or(1))))
    }

    /// Checks the burst (the rate is checked when it is read), naming `field`'s parts.
    pub fn check(&self, field: &str) -> Result<(), (String, String)> {
        if self.rate.count == 0 || self.rate.count > MAX_RATE_COUNT {
            return Err((
                format!("{field}.rate"),
                format!("the count must be 1 to {MAX_RATE_COUNT}"),
            ));
        }
        if self.burst == 0 || self.burst > MAX_BURST {
            return Err((
                format!("{field}.burst"),
                format!("{} is not 1 to {MAX_BURST}", self.burst),
            ));
        }
        Ok(())
    }

    /// How far ahead of `now` the TAT may run while a start is still allowed.
    fn tolerance_nanos(&self) -> u64 {
        self.rate
            .interval_nanos()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (burst {})", self.rate, self.burst)
    }
}

fn nanos(t: Timestamp) -> u64 {
    t.0.saturating_mul(NANOS_PER_MS)
}

/// The first whole millisecond at or after `ns`.
fn ceil_ms(ns: u64) -> Timestamp {
    Timestamp(ns.div_ceil(NANOS_PER_MS))
}

/// One GCRA bucket: the theoretical arrival time of the next start, in nanoseconds
/// since the epoch.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Bucket {
    tat: u64,
}

impl Bucket {
    /// A bucket that was just emptied at `at`: its next start is allowed one interval
    /// later, then at the rate. What a bucket is rebuilt as after a restart, when what
    /// was spent before it is not known.
    pub fn emptied_at(at: Timestamp, limit: &RateLimit) -> Self {
        let full_burst = limit
            .rate
            .interval_nanos()
            .saturating_mul(u64::from(limit.burst.max(1)));
        Self {
            tat: nanos(at).saturating_add(full_burst),
        }
    }

    /// `None` when a start is allowed at `now`, else the first instant it is.
    pub fn limited_until(&self, limit: &RateLimit, now: Timestamp) -> Option<Timestamp> {
        let allowed_from = self.tat.saturating_sub(limit.tolerance_nanos());
        (allowed_from > nanos(now)).then(|| ceil_ms(allowed_from))
    }

    /// Spends one start at `now` (the caller checked it was allowed).
    pub fn spend(&mut self, limit: &RateLimit, now: Timestamp) {
        self.tat = self.tat.max(nanos(now)) + limit.rate.interval_nanos();
    }

    /// Moves its theoretical arrival time by `by_ms` (later when positive), for a step
    /// of the wall clock: the bucket keeps what it had spent, measured from the new `now`.
    pub fn shift(&mut self, by_ms: i64) {
        self.tat = self
            .tat
            .saturating_add_signed(by_ms.saturating_mul(NANOS_PER_MS as i64));
    }

    /// True when the bucket is as full as a new one: forgetting it changes nothing.
    pub fn is_full(&self, now: Timestamp) -> bool {
        self.tat <= nanos(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str, burst: u32) -> RateLimit {
        RateLimit::new(Rate::parse(text).expect("valid"), burst)
    }

    #[test]
    fn rates_read_as_celery_writes_them_and_bad_ones_say_how_to_write_them() {
        assert_eq!(
            Rate::parse("100/s"),
            Ok(Rate {
                count: 100,
                per: RatePeriod::Second
            })
        );
        assert_eq!(
            Rate::parse("10/m").map(|r| r.to_string()),
            Ok("10/m".into())
        );
        assert_eq!(
            Rate::parse("5/h").map(|r| r.interval_nanos()),
            Ok(720_000_000_000)
        );
        for bad in ["", "100", "x/s", "0/s", "10/d", "-1/s", "2000000/s"] {
            let err = Rate::parse(bad).expect_err(bad);
            assert!(
                err.contains("100/s") || err.contains("1 to"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_full_bucket_allows_a_burst_then_the_rate() {
        let l = limit("10/s", 3);
        let t0 = Timestamp(1_000);
        let mut b = Bucket::default();
        for _ in 0..3 {
            assert_eq!(b.limited_until(&l, t0), None);
            b.spend(&l, t0);
        }
        assert_eq!(b.limited_until(&l, t0), Some(Timestamp(1_100)));
        assert_eq!(b.limited_until(&l, Timestamp(1_100)), None);
        b.spend(&l, Timestamp(1_100));
        assert_eq!(
            b.limited_until(&l, Timestamp(1_100)),
            Some(Timestamp(1_200))
        );
        assert!(!b.is_full(Timestamp(1_399)));
        assert!(b.is_full(Timestamp(1_400)));
    }

    #[test]
    fn an_emptied_bucket_waits_one_interval() {
        let l = limit("2/s", 4);
        let b = Bucket::emptied_at(Timestamp(10_000), &l);
        assert_eq!(
            b.limited_until(&l, Timestamp(10_000)),
            Some(Timestamp(10_500))
        );
        assert_eq!(b.limited_until(&l, Timestamp(10_500)), None);
    }

    #[test]
    fn limits_refuse_a_zero_burst_naming_the_field() {
        let err = limit("1/s", 0).check("rate_limit").expect_err("zero");
        assert_eq!(err.0, "rate_limit.burst");
    }
}
