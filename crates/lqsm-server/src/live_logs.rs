//! The output of running attempts as their workers upload it (protocol 8,
//! `POST /v1/workers/{id}/logs`), kept in the leader's memory until each attempt's
//! report is durable.
//!
//! It is a preview: the report's `logs` are the truth and go to the store as before,
//! so this holds nothing that must survive the leader. Keeping it out of the store
//! spares the store a write per running attempt per second (and the followers a read
//! of it per reader); a new leader starts empty and fills again from the next uploads.
//! The actor decides which uploads are taken (only the current attempt's, by the rule
//! reports follow) and drops an attempt's tail once the batch that ended the attempt
//! is durable; readers read here directly, never through the actor.

use lqsm_core::{FencingToken, JobId};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The tails of running attempts, one per job (a job has one current attempt).
#[derive(Debug)]
pub struct LiveLogs {
    /// The most bytes kept per attempt (`limits.max_log_bytes`): the last ones.
    cap: usize,
    tails: Mutex<HashMap<JobId, Tail>>,
}

/// The kept end of one attempt's output.
#[derive(Debug)]
struct Tail {
    token: FencingToken,
    attempt: u32,
    /// Where `bytes` starts in the attempt's output.
    start: u64,
    bytes: VecDeque<u8>,
}

impl Tail {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// What a reader gets of a running attempt's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRead {
    /// The attempt's number.
    pub attempt: u32,
    /// Where `text` starts in the attempt's output.
    pub offset: u64,
    /// The output from `offset` to the end of what was uploaded.
    pub text: String,
    /// Whether the output between the offset asked and `offset` is no longer kept.
    pub missed: bool,
}

impl LiveLogs {
    /// Keeps at most `cap` bytes per attempt.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            tails: Mutex::new(HashMap::new()),
        }
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Tail>> {
        // A panic while holding the lock leaves a tail at worst incomplete: a preview.
        self.tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a chunk of the current attempt `token` (number `attempt`) of job `job`,
    /// starting at `offset` in its output. Only what the tail does not hold yet is
    /// added (a chunk sent again after a failed call overlaps); a chunk starting past
    /// the tail's end (uploads that never arrived, a new leader) starts the tail again
    /// there. The actor calls this only for current attempts.
    pub fn append(&self, job: JobId, token: FencingToken, attempt: u32, offset: u64, text: &[u8]) {
        let mut tails = self.tails();
        let tail = tails.entry(job).or_insert_with(|| Tail {
            token,
            attempt,
            start: offset,
            bytes: VecDeque::new(),
        });
        if tail.token != token {
            // The job's earlier attempt: the current one starts afresh.
            *tail = Tail {
                token,
                attempt,
                start: offset,
                bytes: VecDeque::new(),
            };
        }
        let end = tail.end();
        if offset > end {
            tail.start = offset;
            tail.bytes.clear();
            tail.bytes.extend(text);
        } else {
            let already = usize::try_from(end - offset).unwrap_or(usize::MAX);
            if let Some(new) = text.get(already..) {
                tail.bytes.extend(new);
            }
        }
        let excess = tail.bytes.len().saturating_sub(self.cap);
        if excess > 0 {
            tail.bytes.drain(..excess);
            tail.start += excess as u64;
        }
    }

    /// The output of attempt `token` of job `job` from `from` on (all that is kept when
    /// `from` is before it); `None` when nothing of that attempt is held.
    pub fn read(&self, job: JobId, token: FencingToken, from: u64) -> Option<LiveRead> {
        let tails = self.tails();
        let tail = tails.get(&job).filter(|t| t.token == token)?;
        let end = tail.end();
        let missed = from < tail.start;
        let mut at = from.clamp(tail.start, end);
        let (front, back) = tail.bytes.as_slices();
        let skip = usize::try_from(at - tail.start).unwrap_or(usize::MAX);
        let mut bytes: Vec<u8> = front.iter().chain(back).skip(skip).copied().collect();
        // The tail's front (or an offset asked) may fall inside a character: start at the
        // next one.
        at += lqsm_api::skip_partial_character(&mut bytes) as u64;
        Some(LiveRead {
            attempt: tail.attempt,
            offset: at,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            missed,
        })
    }

    /// Forgets the tail of `job` unless it belongs to `current`, its current attempt.
    pub fn keep_only(&self, job: JobId, current: Option<FencingToken>) {
        let mut tails = self.tails();
        if tails.get(&job).is_some_and(|t| Some(t.token) != current) {
            tails.remove(&job);
        }
    }

    /// Whether any tail is held (so the actor skips the check after each batch when
    /// no worker uploads output).
    pub fn is_empty(&self) -> bool {
        self.tails().is_empty()
    }

    /// How many attempts' tails are held.
    pub fn len(&self) -> usize {
        self.tails().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId(uuid::Uuid::from_u128(7))
    }

    #[test]
    fn chunks_append_overlaps_are_taken_once_and_gaps_start_again() {
        let logs = LiveLogs::new(1024);
        let t = FencingToken(3);
        logs.append(job(), t, 1, 0, b"one\n");
        logs.append(job(), t, 1, 0, b"one\ntwo\n");
        logs.append(job(), t, 1, 8, b"three\n");
        let read = logs.read(job(), t, 0).expect("held");
        assert_eq!(read.text, "one\ntwo\nthree\n");
        assert_eq!((read.offset, read.missed), (0, false));
        let read = logs.read(job(), t, 4).expect("held");
        assert_eq!((read.offset, read.text.as_str()), (4, "two\nthree\n"));
        logs.append(job(), t, 1, 100, b"later\n");
        let read = logs.read(job(), t, 14).expect("held");
        assert_eq!((read.offset, read.missed), (100, true));
        assert_eq!(read.text, "later\n");
        assert!(logs.read(job(), FencingToken(2), 0).is_none());
    }

    #[test]
    fn the_tail_keeps_the_end_and_says_when_an_offset_is_gone() {
        let logs = LiveLogs::new(8);
        let t = FencingToken(1);
        logs.append(job(), t, 1, 0, b"0123456789abcdef");
        let read = logs.read(job(), t, 2).expect("held");
        assert_eq!(
            (read.offset, read.text.as_str(), read.missed),
            (8, "89abcdef", true)
        );
        // A character cut at the front is skipped whole.
        let logs = LiveLogs::new(4);
        logs.append(job(), t, 1, 0, "aé€".as_bytes());
        let read = logs.read(job(), t, 0).expect("held");
        assert_eq!((read.offset, read.text.as_str()), (3, "€"));
    }

    #[test]
    fn a_new_attempt_replaces_the_old_and_keep_only_forgets_what_is_not_current() {
        let logs = LiveLogs::new(64);
        logs.append(job(), FencingToken(1), 1, 0, b"first");
        logs.append(job(), FencingToken(2), 2, 0, b"second");
        assert!(logs.read(job(), FencingToken(1), 0).is_none());
        logs.keep_only(job(), Some(FencingToken(2)));
        assert_eq!(logs.len(), 1);
        logs.keep_only(job(), None);
        assert!(logs.is_empty());
    }
}
