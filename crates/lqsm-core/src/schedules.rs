//! Periodic schedules: Celery beat inside the scheduler. A schedule names a trigger (a
//! cron expression in a time zone, or a fixed interval) and a job template; at each fire
//! time the core submits one job from the template, in the same batch that records the
//! fire, so a fire and its job become durable together.
//!
//! Each fire time makes at most one job, whatever happens: the schedule's record keeps
//! its last fire time (never fired again), and the job's id is derived from the schedule's
//! name and the fire time (a second submission of the same fire would be the same job).
//! Fire times missed while no server led (or the clock jumped) follow the schedule's
//! misfire policy; a fire whose previous job still runs follows its overlap policy.

use crate::ids::{JobId, Timestamp};
use crate::jobs::SubmitRequest;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// A cron expression: five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first; `@hourly` and friends too. Evaluated in `timezone` (an IANA
    /// name such as `Europe/Paris`; `UTC` by default), daylight saving included: a local
    /// time the clock skips fires once at the next valid time, a local time it repeats
    /// fires once.
    Cron {
        /// The expression.
        expr: String,
        /// The IANA time zone it is read in.
        timezone: String,
    },
    /// Every `interval_ms` milliseconds, counted from the schedule's creation.
    Every {
        /// The interval (at least [`MIN_INTERVAL`]).
        interval_ms: u64,
    },
}

/// What to do with fire times missed while nothing could fire them (no leader, a long
/// pause) — found when the schedule fires more than [`MISFIRE_GRACE`] late.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Misfire {
    /// Fire none of them; carry on at the next fire time.
    Skip,
    /// Fire once for all of them (Celery beat's behaviour), then carry on.
    #[default]
    RunOnce,
    /// Fire the latest `max` of them, oldest first.
    CatchUp {
        /// The most missed fires made up for.
        max: u32,
    },
}

/// What to do when a fire time comes while the job of the previous fire has not
/// finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Submit anyway: runs may overlap.
    #[default]
    Allow,
    /// Skip this fire (the schedule's last error says so).
    Skip,
}

/// A schedule as its creator states it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// Its name: 1 to 128 letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// When it fires.
    pub trigger: Trigger,
    /// The job each fire submits (its `id` is ignored: each fire's job gets its own).
    pub job: SubmitRequest,
    /// Missed fire times.
    #[serde(default)]
    pub misfire: Misfire,
    /// Fires while the previous job runs.
    #[serde(default)]
    pub overlap: Overlap,
}

/// A schedule with its state: what the store keeps, and what reads show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// As stated.
    pub spec: ScheduleSpec,
    /// Paused schedules do not fire; resuming carries on at the next fire time after then.
    pub paused: bool,
    /// When it was created (the anchor of an interval).
    pub created_at: Timestamp,
    /// Its next fire time (`None`: the trigger never fires again).
    pub next_fire: Option<Timestamp>,
    /// The last fire time handled (fired, skipped by policy, or failed to submit).
    pub last_fire: Option<Timestamp>,
    /// The job of the last fire that made one.
    pub last_job: Option<JobId>,
    /// Why the last fire made no job, if it did not.
    pub last_error: Option<String>,
    /// Jobs made so far.
    pub fired: u64,
}

/// The shortest interval of an interval schedule.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How late a fire may be handled and still count as on time (not a misfire).
pub const MISFIRE_GRACE: Duration = Duration::from_secs(2);

/// The most missed fire times looked at after a long downtime (older ones are dropped
/// whatever the policy).
pub const MAX_MISSED: usize = 1000;

/// Why a schedule request was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// A field is wrong; `field` names it in wire terms.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field, e.g. `trigger.expr`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A schedule of that name exists.
    #[error("a schedule named `{0}` exists")]
    Exists(String),
    /// No schedule of that name.
    #[error("no schedule named `{0}`")]
    NotFound(String),
}

fn invalid(field: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A trigger ready to compute fire times.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    Every { interval: u64, anchor: u64 },
}

impl Compiled {
    /// Checks a trigger and makes it ready.
    pub(crate) fn new(trigger: &Trigger, created_at: Timestamp) -> Result<Self, ScheduleError> {
        match trigger {
            Trigger::Cron { expr, timezone } => {
                let tz = chrono_tz::Tz::from_str(timezone).map_err(|_| {
                    invalid(
                        "trigger.timezone",
                        format!("`{timezone}` is not an IANA time zone (e.g. UTC, Europe/Paris)"),
                    )
                })?;
                let cron = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build()
                    .parse(expr)
                    .map_err(|e| {
                        invalid(
                            "trigger.expr",
                            format!(
                                "`{expr}`: {e} (five fields: minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-7; or six with seconds 0-59 first)"
                            ),
                        )
                    })?;
                Ok(Compiled::Cron(Box::new(cron), tz))
            }
            Trigger::Every { interval_ms } => {
                if *interval_ms < MIN_INTERVAL.as_millis() as u64 {
                    return Err(invalid(
                        "trigger.interval_ms",
                        format!("must be at least {} ms", MIN_INTERVAL.as_millis()),
                    ));
                }
                Ok(Compiled::Every {
                    interval: *interval_ms,
                    anchor: created_at.0,
                })
            }
        }
    }

    /// The first fire time strictly after `after`.
    pub(crate) fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Compiled::Every { interval, anchor } => {
                let periods = after.0.saturating_sub(*anchor) / interval + 1;
                anchor
                    .checked_add(periods.checked_mul(*interval)?)
                    .map(Timestamp)
            }
            Compiled::Cron(cron, tz) => {
                use chrono::TimeZone;
                let millis = i64::try_from(after.0).ok()?;
                let local = tz.timestamp_millis_opt(millis).single()?;
                let next = cron.find_next_occurrence(&local, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok().map(Timestamp)
            }
        }
    }
}

/// Checks a schedule's name.
pub(crate) fn check_name(name: &str) -> Result<(), ScheduleError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "must be 1 to 128 letters, digits, `.`, `_` or `-`",
        ))
    }
}

/// The id of the job a schedule's fire at `fire` makes: a UUIDv7 whose time is the fire
/// time and whose other bits come from the schedule's name and the fire time, so the same
/// fire always names the same job.
pub fn fire_job_id(schedule: &str, fire: Timestamp) -> JobId {
    let name = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("lqsm schedule {schedule} fire {}", fire.0).as_bytes(),
    );
    let mut random = [0u8; 10];
    random.copy_from_slice(&name.as_bytes()[6..16]);
    JobId(uuid::Builder::from_unix_timestamp_millis(fire.0, &random).into_uuid())
}

/// The fire times due at `now` from `first` on (oldest first, at most [`MAX_MISSED`]),
/// and the first fire time after `now`.
pub(crate) fn due_times(
    compiled: &Compiled,
    first: Timestamp,
    now: Timestamp,
) -> (Vec<Timestamp>, Option<Timestamp>) {
    let mut due = std::collections::VecDeque::new();
    let mut at = Some(first);
    while let Some(t) = at {
        if t > now {
            break;
        }
        due.push_back(t);
        if due.len() > MAX_MISSED {
            due.pop_front();
        }
        at = compiled.next_after(t);
    }
    (due.into(), at)
}

/// Which of the due fire times to fire under `policy`: those on time (at most
/// [`MISFIRE_GRACE`] before `now`) always; the missed ones as the policy says.
pub(crate) fn to_fire(due: &[Timestamp], policy: Misfire, now: Timestamp) -> Vec<Timestamp> {
    let grace = MISFIRE_GRACE.as_millis() as u64;
    let (missed, on_time): (Vec<Timestamp>, Vec<Timestamp>) =
        due.iter().partition(|t| now.0.saturating_sub(t.0) > grace);
    let mut fire = match policy {
        Misfire::Skip => Vec::new(),
        // One fire stands for all that were missed, unless one is on time anyway.
        Misfire::RunOnce if on_time.is_empty() => missed.last().copied().into_iter().collect(),
        Misfire::RunOnce => Vec::new(),
        Misfire::CatchUp { max } => {
            let keep = missed.len().min(max as usize);
            missed[missed.len() - keep..].to_vec()
        }
    };
    fire.extend(on_time);
    fire
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str, tz: &str) -> Compiled {
        Compiled::new(
            &Trigger::Cron {
                expr: expr.into(),
                timezone: tz.into(),
            },
            Timestamp(0),
        )
        .expect("valid")
    }

    fn utc_ms(text: &str) -> Timestamp {
        Timestamp(
            chrono::DateTime::parse_from_rfc3339(text)
                .expect("rfc3339")
                .timestamp_millis() as u64,
        )
    }

    #[test]
    fn intervals_count_from_creation() {
        let every =
            Compiled::new(&Trigger::Every { interval_ms: 1000 }, Timestamp(500)).expect("valid");
        assert_eq!(every.next_after(Timestamp(500)), Some(Timestamp(1500)));
        assert_eq!(every.next_after(Timestamp(1499)), Some(Timestamp(1500)));
        assert_eq!(every.next_after(Timestamp(1500)), Some(Timestamp(2500)));
    }

    #[test]
    fn cron_with_and_without_seconds() {
        let every_minute = cron("* * * * *", "UTC");
        assert_eq!(
            every_minute.next_after(utc_ms("2026-01-01T10:00:30Z")),
            Some(utc_ms("2026-01-01T10:01:00Z"))
        );
        let every_5s = cron("*/5 * * * * *", "UTC");
        assert_eq!(
            every_5s.next_after(utc_ms("2026-01-01T10:00:00Z")),
            Some(utc_ms("2026-01-01T10:00:05Z"))
        );
    }

    #[test]
    fn a_local_time_skipped_by_daylight_saving_fires_once_at_the_next_valid_time() {
        // 2026-03-29 in Paris: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let daily = cron("30 2 * * *", "Europe/Paris");
        let fire = daily
            .next_after(utc_ms("2026-03-28T23:00:00Z"))
            .expect("a time");
        // 03:00 CEST is 01:00 UTC, the first valid time after the gap.
        assert_eq!(fire, utc_ms("2026-03-29T01:00:00Z"));
        // Then the next day at 02:30 CEST (00:30 UTC): once, not twice.
        assert_eq!(daily.next_after(fire), Some(utc_ms("2026-03-30T00:30:00Z")));
    }

    #[test]
    fn a_local_time_repeated_by_daylight_saving_fires_once() {
        // 2026-10-25 in Paris: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let daily = cron("30 2 * * *", "Europe/Paris");
        let first = daily
            .next_after(utc_ms("2026-10-24T22:00:00Z"))
            .expect("a time");
        assert_eq!(first, utc_ms("2026-10-25T00:30:00Z"), "02:30 CEST");
        let next = daily.next_after(first).expect("a time");
        assert_eq!(
            next,
            utc_ms("2026-10-26T01:30:00Z"),
            "the next day, 02:30 CET"
        );
    }

    #[test]
    fn bad_triggers_name_their_field() {
        let err = |t: Trigger| match Compiled::new(&t, Timestamp(0)) {
            Err(ScheduleError::InvalidField { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(Trigger::Cron {
                expr: "61 * * * *".into(),
                timezone: "UTC".into()
            }),
            "trigger.expr"
        );
        assert_eq!(
            err(Trigger::Cron {
                expr: "* * * * *".into(),
                timezone: "Mars/Olympus".into()
            }),
            "trigger.timezone"
        );
        assert_eq!(
            err(Trigger::Every { interval_ms: 10 }),
            "trigger.interval_ms"
        );
    }

    #[test]
    fn misfire_policies_choose_among_missed_times() {
        let t = |s: u64| Timestamp(s * 1000);
        let due = [t(10), t(20), t(30), t(40)];
        let now = t(41); // 40 is on time, the others missed.
        assert_eq!(to_fire(&due, Misfire::Skip, now), vec![t(40)]);
        assert_eq!(to_fire(&due, Misfire::RunOnce, now), vec![t(40)]);
        assert_eq!(
            to_fire(&due, Misfire::CatchUp { max: 2 }, now),
            vec![t(20), t(30), t(40)]
        );
        let late = t(45); // all missed
        assert_eq!(to_fire(&due, Misfire::Skip, late), Vec::<Timestamp>::new());
        assert_eq!(to_fire(&due, Misfire::RunOnce, late), vec![t(40)]);
    }

    #[test]
    fn a_fire_names_the_same_job_every_time() {
        let a = fire_job_id("nightly", Timestamp(1_000_000));
        assert_eq!(a, fire_job_id("nightly", Timestamp(1_000_000)));
        assert_ne!(a, fire_job_id("nightly", Timestamp(1_001_000)));
        assert_ne!(a, fire_job_id("hourly", Timestamp(1_000_000)));
        assert_eq!(a.0.get_version_num(), 7);
    }
}
