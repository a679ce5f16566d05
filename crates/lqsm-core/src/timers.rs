//! The one timer structure behind everything driven by time. Entries are never
//! removed early: each names what it is for, and is checked against the current state
//! when it fires, so cancelling a timer is free and a stale one does nothing.

use crate::ids::{
    FencingToken, HoldKey, JobKey, PollTicket, QueueId, ScheduleKey, Timestamp, WorkerKey,
};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a timer is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Timer {
    /// A delayed job (ETA, delay or retry backoff) may become ready.
    Release(JobKey),
    /// A pending job may have expired.
    Expire(JobKey),
    /// An attempt may have run past its timeout.
    AttemptTimeout(JobKey, FencingToken),
    /// A worker may have missed its heartbeat.
    Heartbeat(WorkerKey),
    /// A worker may not have polled again in time (`QUIET_GRACE`).
    Quiet(WorkerKey),
    /// A lost worker may have been kept for `Config::lost_worker_retention`.
    ForgetWorker(WorkerKey),
    /// A finished job may have passed its retention.
    Purge(JobKey),
    /// A starved queue may have waited past the preemption delay.
    PreemptionDue,
    /// A restored attempt's grace period for being reclaimed may have ended.
    Reclaim(JobKey, FencingToken),
    /// A worker's long-poll may have waited as long as it may.
    PollDue(WorkerKey, PollTicket),
    /// A leaf held back by a rate limit may dispatch again.
    RateLimit(QueueId),
    /// A per-key or per-handler limit may let the next job it holds start.
    GiveBack(HoldKey),
    /// A queue created on demand may have been idle past its template's idle time.
    QueueIdle(QueueId),
    /// A retired queue may have passed the retention.
    ForgetRetiredQueues,
    /// A schedule may be due to fire.
    Schedule(ScheduleKey),
    /// An open broadcast may have reached its end (`OpenBroadcast::until`).
    BroadcastUntil(uuid::Uuid),
}

#[derive(Debug)]
struct Entry {
    at: Timestamp,
    seq: u64,
    timer: Timer,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// `at` moved by `by_ms` milliseconds (later when positive), saturating at both ends.
pub(crate) fn shifted(at: Timestamp, by_ms: i64) -> Timestamp {
    Timestamp(at.0.saturating_add_signed(by_ms))
}

/// A min-heap of timers; ties fire in the order they were set.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl Timers {
    pub fn set(&mut self, at: Timestamp, timer: Timer) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            timer,
        }));
    }

    /// The next timer due at or before `now`, if any.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, Timer)> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.at, e.timer))
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Moves every timer `moves` picks by `by_ms` (later when positive), keeping the
    /// order in which timers of one instant were set. For a step of the wall clock
    /// (see `ResourceManager::clock_jumped`): rare, so rebuilding the heap is fine.
    pub fn shift(&mut self, by_ms: i64, mut moves: impl FnMut(&Timer) -> bool) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .map(|Reverse(mut entry)| {
                if moves(&entry.timer) {
                    entry.at = shifted(entry.at, by_ms);
                }
                Reverse(entry)
            })
            .collect();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_time_order_then_setting_order() {
        let mut t = Timers::default();
        t.set(Timestamp(30), Timer::PreemptionDue);
        t.set(Timestamp(10), Timer::Release(JobKey::default()));
        t.set(Timestamp(10), Timer::Purge(JobKey::default()));
        assert_eq!(t.next_due(), Some(Timestamp(10)));
        assert_eq!(t.pop_due(Timestamp(9)), None);
        assert!(matches!(
            t.pop_due(Timestamp(10)),
            Some((_, Timer::Release(_)))
        ));
        assert!(matches!(
            t.pop_due(Timestamp(10)),
            Some((_, Timer::Purge(_)))
        ));
        assert_eq!(t.pop_due(Timestamp(29)), None);
        assert!(matches!(
            t.pop_due(Timestamp(100)),
            Some((_, Timer::PreemptionDue))
        ));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn shifting_moves_only_the_timers_picked_and_keeps_their_order() {
        let mut t = Timers::default();
        t.set(Timestamp(100), Timer::PreemptionDue);
        t.set(Timestamp(100), Timer::Purge(JobKey::default()));
        t.set(Timestamp(200), Timer::Release(JobKey::default()));
        t.shift(-150, |timer| !matches!(timer, Timer::Release(_)));
        assert!(matches!(
            t.pop_due(Timestamp(0)),
            Some((Timestamp(0), Timer::PreemptionDue))
        ));
        assert!(matches!(
            t.pop_due(Timestamp(0)),
            Some((Timestamp(0), Timer::Purge(_)))
        ));
        assert_eq!(t.pop_due(Timestamp(199)), None);
        t.shift(1_000, |_| true);
        assert_eq!(t.next_due(), Some(Timestamp(1_200)));
    }
}
