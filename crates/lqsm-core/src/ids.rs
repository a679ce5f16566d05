//! Identities and time, as newtypes so that one cannot be passed where another is meant;
//! also the internal slot keys, here so that every module below the ResourceManager
//! can name jobs and workers without depending on one another.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// A job's identity: a UUIDv7 chosen by the JobServer (the core never makes one up).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

/// A worker's identity, chosen by the worker (or its shell) when it registers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub Uuid);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({})", self.0)
    }
}

/// A queue's identity inside one ResourceManager. Never reused, even after the
/// queue is deleted, so a finished job can still name the queue it ran in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(pub u32);

/// The token of one attempt. Strictly increasing across the whole cluster, so a
/// report carrying any token but the job's current one is recognisably stale.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A point in time: milliseconds since the Unix epoch. The core never reads a
/// clock; every call that depends on time is handed `now`.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The instant `d` after this one (saturating at the far future).
    pub fn after(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this instant is (zero if it is not later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

slotmap::new_key_type! {
    /// A job's slot in the ResourceManager's table (internal; clients use [`JobId`]).
    pub struct JobKey;
}

slotmap::new_key_type! {
    /// The jobs one per-key or per-handler rate limit holds back (internal).
    pub struct HoldKey;
}

slotmap::new_key_type! {
    /// A worker's slot in the ResourceManager's table (internal; clients use [`WorkerId`]).
    pub struct WorkerKey;
}

slotmap::new_key_type! {
    /// A schedule's slot in the ResourceManager's table (internal; clients use its name).
    pub struct ScheduleKey;
}

/// Identifies an interned job constraint (selector plus kind/handler).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct ConstraintId(pub(crate) u32);

/// Names one long-poll call. The shell chooses it (any number unique among the polls
/// it has waiting) and finds the call to answer by it in [`crate::PollAnswer`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PollTicket(pub u64);
