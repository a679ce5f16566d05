//! The one place where durable records become bytes and bytes become records again.
//!
//! Pure functions over byte slices (no I/O), used by every store backend through the
//! server. Each record says which **format** wrote it:
//!
//! - **format 0**: the JSON text written by the first releases (no header). Its first byte is
//!   always `{`. Still read, never written.
//! - **format 1**: a header — the byte [`MARKER`] (never the first byte of JSON text), then
//!   the format number as a LEB128 varint — followed by a compact positional binary body.
//!   Integers are LEB128 varints (signed ones zigzag-encoded), strings and lists carry their
//!   length first, optional values a 0/1 byte. JSON values inside a job (function arguments,
//!   results) stay JSON text, so the core never parses them. Still read, no longer written.
//! - **format 2**: format 1 with two fields after a job record's last: the
//!   job's `keys` (a map, for per-key rate limits) and, optional, the instant until which a
//!   rate limit held it back. Queue and payload bodies are the same as in format 1.
//! - **format 3**, written today: format 2 with five optional fields after the last: the
//!   jobs the job waits for (its parents in order, when it may run, whether it receives
//!   their results), the workflow it belongs to (the workflow's id, the node's name), its
//!   soft timeout, the worker it is pinned to (a broadcast's job) and the progress it last
//!   reported; one more attempt outcome (`retry_requested`, a countdown and a message); and
//!   one more termination (`succeeded` with its result kept apart in the store).
//!
//! A record whose format is newer than [`CURRENT_FORMAT`] is refused with
//! [`CodecError::NewerFormat`]: it is not damaged, it was written by a newer LQSM.
//!
//! Formats 1 and 2 are positional: **any** change to what a job record holds (a field added,
//! removed, reordered, an enum variant added) must come with a new format number here and a
//! decoder kept for the older one. The tests `format_2_bytes_are_stable` and
//! `format_1_bytes_still_read` pin the exact bytes of a full record in each format, so
//! that such a change cannot go unnoticed.
//!
//! Queue records are few (one per queue) and hold nested, often-changing settings, so their
//! format 1 body is the JSON text of the record behind the same header: the version is there,
//! and a compact binary body would save nothing a restart can measure.

use crate::ids::{FencingToken, JobId, Timestamp, WorkerId};
use crate::jobs::{
    Attempt, AttemptOutcome, Command, Dependencies, JobKind, JobSpec, JobState, Json, RetryPolicy,
    RunWhen, SubmitRequest, Termination, WorkflowNode,
};
use crate::queues::{JobDefaults, QueuePath};
use crate::recovery::{JobRecord, QueueRecord};
use crate::resources::{MiB, Millicores, ResourceName, Resources};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use uuid::Uuid;

/// The format this build writes, and the newest it reads.
pub const CURRENT_FORMAT: u32 = 3;

/// First byte of every record of format 1 or later. JSON text (format 0) never starts with
/// it: it is not valid UTF-8 as a first byte.
pub const MARKER: u8 = 0xB7;

/// Why bytes could not be decoded into a record.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The record was written by a newer LQSM, in a format this build does not know. The data
    /// is not damaged.
    #[error(
        "written by a newer LQSM (format {format}); this LQSM reads formats 0 to {newest}: run the newer release on this data directory"
    )]
    NewerFormat {
        /// The record's format.
        format: u32,
        /// The newest format this build reads.
        newest: u32,
    },
    /// The bytes are not a record of the format they claim.
    #[error("not a valid record: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> CodecError {
    CodecError::Corrupt(what.into())
}

/// The format a record was written in (0 for the JSON of the first releases).
pub fn format_of(bytes: &[u8]) -> Result<u32, CodecError> {
    match bytes.first() {
        None => Err(corrupt("the record is empty")),
        Some(b'{') => Ok(0),
        Some(&MARKER) => {
            let mut reader = Reader::new(&bytes[1..]);
            let format = reader.varint()?;
            u32::try_from(format).map_err(|_| corrupt(format!("format number {format}")))
        }
        Some(other) => Err(corrupt(format!(
            "it starts with byte {other:#04x}, neither JSON nor an LQSM record header"
        ))),
    }
}

/// Splits a record into its format and its body, refusing formats newer than this build's.
fn body(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    let format = format_of(bytes)?;
    if format == 0 {
        return Ok((0, bytes));
    }
    if format > CURRENT_FORMAT {
        return Err(CodecError::NewerFormat {
            format,
            newest: CURRENT_FORMAT,
        });
    }
    let header = 1 + varint_len(u64::from(format));
    Ok((format, &bytes[header..]))
}

fn header(out: &mut Vec<u8>) {
    out.push(MARKER);
    put_varint(out, u64::from(CURRENT_FORMAT));
}

/// A job record in the current format.
pub fn encode_job(record: &JobRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    header(&mut out);
    let w = &mut out;
    w.extend_from_slice(record.id.0.as_bytes());
    put_str(w, record.queue.as_str());
    put_varint(w, record.seq);
    w.push(state_tag(record.state));
    put_varint(w, record.submitted_at.0);
    put_opt(w, record.not_before, |w, t| put_varint(w, t.0));
    put_spec(w, &record.spec);
    put_varint(w, record.attempts.len() as u64);
    for attempt in &record.attempts {
        put_attempt(w, attempt);
    }
    put_varint(w, u64::from(record.failures));
    put_opt(w, record.termination.as_ref(), put_termination);
    put_opt(w, record.finished_at, |w, t| put_varint(w, t.0));
    // Format 2's fields.
    let keys = record.spec.keys();
    put_varint(w, keys.iter().count() as u64);
    for (name, value) in keys.iter() {
        put_str(w, name);
        put_str(w, value);
    }
    put_opt(w, record.rate_limited_until, |w, t| put_varint(w, t.0));
    put_opt(w, record.spec.retry_of(), |w, id| {
        w.extend_from_slice(id.0.as_bytes())
    });
    // Format 3's fields.
    put_opt(w, record.spec.depends(), |w, depends| {
        put_varint(w, depends.parents.len() as u64);
        for parent in &depends.parents {
            w.extend_from_slice(parent.0.as_bytes());
        }
        w.push(match depends.run_when {
            RunWhen::AllSucceeded => 0,
            RunWhen::AllFinished => 1,
        });
        w.push(u8::from(depends.pass_results));
    });
    put_opt(w, record.spec.workflow(), |w, node| {
        w.extend_from_slice(node.workflow.as_bytes());
        put_str(w, &node.name);
    });
    put_opt(w, record.spec.soft_timeout(), put_duration);
    put_opt(w, record.spec.pinned(), |w, worker| {
        w.extend_from_slice(worker.0.as_bytes())
    });
    put_opt(w, record.progress.as_ref().map(Json::as_str), put_str);
    out
}

/// A job record of any format this build reads.
pub fn decode_job(bytes: &[u8]) -> Result<JobRecord, CodecError> {
    JobDecoder::default().decode(bytes)
}

/// Decodes many job records, sharing one copy of each queue path between the records of
/// the same queue (a restart decodes millions of records of a few queues).
#[derive(Debug, Default)]
pub struct JobDecoder {
    last_queue: Option<QueuePath>,
}

impl JobDecoder {
    /// A job record of any format this build reads.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<JobRecord, CodecError> {
        let (format, body) = body(bytes)?;
        if format == 0 {
            return serde_json::from_slice(body).map_err(|e| corrupt(format!("JSON: {e}")));
        }
        let mut r = Reader::new(body);
        let id = JobId(Uuid::from_bytes(r.array()?));
        let queue = self.queue(r.str()?)?;
        let mut record = JobRecord {
            id,
            queue,
            seq: r.varint()?,
            state: state_from(r.byte()?)?,
            submitted_at: Timestamp(r.varint()?),
            not_before: r.opt(|r| Ok(Timestamp(r.varint()?)))?,
            spec: r.spec()?,
            attempts: {
                let count = r.len()?;
                let mut attempts = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    attempts.push(r.attempt()?);
                }
                attempts
            },
            failures: r.u32()?,
            termination: r.opt(Reader::termination)?,
            finished_at: r.opt(|r| Ok(Timestamp(r.varint()?)))?,
            rate_limited_until: None,
            progress: None,
        };
        if format >= 2 {
            let keys = r.map()?;
            record.spec = record.spec.with_keys(keys);
            record.rate_limited_until = r.opt(Reader::timestamp)?;
            let retry_of = r.opt(|r| Ok(JobId(Uuid::from_bytes(r.array()?))))?;
            record.spec = record.spec.with_retry_of(retry_of);
        }
        if format >= 3 {
            let depends = r.opt(|r| {
                let count = r.len()?;
                let mut parents = Vec::with_capacity(count.min(crate::jobs::MAX_PARENTS));
                for _ in 0..count {
                    parents.push(JobId(Uuid::from_bytes(r.array()?)));
                }
                let run_when = match r.byte()? {
                    0 => RunWhen::AllSucceeded,
                    1 => RunWhen::AllFinished,
                    other => return Err(corrupt(format!("a run-when tag {other}"))),
                };
                let pass_results = match r.byte()? {
                    0 => false,
                    1 => true,
                    other => return Err(corrupt(format!("a flag {other}"))),
                };
                Ok(Dependencies {
                    parents,
                    run_when,
                    pass_results,
                })
            })?;
            let workflow = r.opt(|r| {
                Ok(WorkflowNode {
                    workflow: Uuid::from_bytes(r.array()?),
                    name: r.string()?,
                })
            })?;
            record.spec = record.spec.with_dependencies(depends, workflow);
            let soft_timeout = r.opt(Reader::duration)?;
            record.spec = record.spec.with_soft_timeout(soft_timeout);
            let pinned = r.opt(|r| Ok(WorkerId(Uuid::from_bytes(r.array()?))))?;
            record.spec = record.spec.with_pinned(pinned);
            record.progress = r.opt(Reader::json)?;
        }
        r.finish()?;
        Ok(record)
    }

    fn queue(&mut self, text: &str) -> Result<QueuePath, CodecError> {
        if let Some(last) = &self.last_queue
            && last.as_str() == text
        {
            return Ok(last.clone());
        }
        let path = QueuePath::parse(text).map_err(|e| corrupt(format!("queue path: {e}")))?;
        self.last_queue = Some(path.clone());
        Ok(path)
    }
}

/// A queue record in the current format.
pub fn encode_queue(record: &QueueRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    header(&mut out);
    serde_json::to_writer(&mut out, record).expect("queue records always serialise");
    out
}

/// A queue record of any format this build reads.
pub fn decode_queue(bytes: &[u8]) -> Result<QueueRecord, CodecError> {
    let (_, body) = body(bytes)?;
    serde_json::from_slice(body).map_err(|e| corrupt(format!("JSON: {e}")))
}

/// A job's kind kept apart from its record (a payload too large to hold in memory), in
/// the current format.
pub fn encode_payload(kind: &JobKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    header(&mut out);
    put_kind(&mut out, kind);
    out
}

/// A payload of any format this build reads.
pub fn decode_payload(bytes: &[u8]) -> Result<JobKind, CodecError> {
    let (format, body) = body(bytes)?;
    if format == 0 {
        return serde_json::from_slice(body).map_err(|e| corrupt(format!("JSON: {e}")));
    }
    let mut r = Reader::new(body);
    let kind = r.kind()?;
    r.finish()?;
    Ok(kind)
}

// ---- writing ----

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn put_opt<T>(out: &mut Vec<u8>, value: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

fn put_duration(out: &mut Vec<u8>, d: Duration) {
    put_varint(out, d.as_secs());
    put_varint(out, u64::from(d.subsec_nanos()));
}

fn put_resources(out: &mut Vec<u8>, r: &Resources) {
    put_varint(out, r.cpu.0);
    put_varint(out, r.memory.0);
    put_varint(out, u64::from(r.gpu));
    put_varint(out, r.customs().len() as u64);
    for (name, amount) in r.customs() {
        put_str(out, name.as_str());
        put_varint(out, *amount);
    }
}

fn put_map(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    put_varint(out, map.len() as u64);
    for (k, v) in map {
        put_str(out, k);
        put_str(out, v);
    }
}

fn put_kind(out: &mut Vec<u8>, kind: &JobKind) {
    match kind {
        JobKind::Command(command) => {
            out.push(0);
            put_varint(out, command.argv.len() as u64);
            for arg in &command.argv {
                put_str(out, arg);
            }
            put_map(out, &command.env);
            put_opt(out, command.cwd.as_deref(), put_str);
        }
        JobKind::Function { handler, args } => {
            out.push(1);
            put_str(out, handler);
            put_str(out, args.as_str());
        }
        JobKind::Stored { handler } => {
            out.push(2);
            put_opt(out, handler.as_deref(), put_str);
        }
    }
}

fn put_spec(out: &mut Vec<u8>, spec: &JobSpec) {
    put_kind(out, &spec.kind);
    put_resources(out, &spec.request);
    put_signed(out, i64::from(spec.priority));
    put_opt(out, spec.timeout, put_duration);
    put_varint(out, u64::from(spec.retry.max_attempts));
    put_duration(out, spec.retry.backoff_base);
    put_duration(out, spec.retry.backoff_cap);
    out.extend_from_slice(&spec.retry.jitter.to_le_bytes());
    put_opt(out, spec.expires_at(), |w, t| put_varint(w, t.0));
    put_opt(out, spec.idempotency_key(), put_str);
    put_map(out, spec.selector());
    put_varint(out, spec.tags().len() as u64);
    for tag in spec.tags() {
        put_str(out, tag);
    }
    put_opt(out, spec.submitted_by(), put_str);
}

/// The name of a job state, as the wire and the store's indexes spell it.
pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Pending => "pending",
        JobState::Scheduled => "scheduled",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Expired => "expired",
    }
}

fn state_tag(state: JobState) -> u8 {
    match state {
        JobState::Pending => 0,
        JobState::Scheduled => 1,
        JobState::Running => 2,
        JobState::Succeeded => 3,
        JobState::Failed => 4,
        JobState::Cancelled => 5,
        JobState::Expired => 6,
    }
}

fn state_from(tag: u8) -> Result<JobState, CodecError> {
    Ok(match tag {
        0 => JobState::Pending,
        1 => JobState::Scheduled,
        2 => JobState::Running,
        3 => JobState::Succeeded,
        4 => JobState::Failed,
        5 => JobState::Cancelled,
        6 => JobState::Expired,
        other => return Err(corrupt(format!("job state {other}"))),
    })
}

fn put_exit_code(out: &mut Vec<u8>, code: Option<i32>) {
    put_opt(out, code, |w, c| put_signed(w, i64::from(c)));
}

fn put_outcome(out: &mut Vec<u8>, outcome: &AttemptOutcome) {
    match outcome {
        AttemptOutcome::Succeeded { result, exit_code } => {
            out.push(0);
            put_opt(out, result.as_ref().map(Json::as_str), put_str);
            put_exit_code(out, *exit_code);
        }
        AttemptOutcome::Failed { exit_code, message } => {
            out.push(1);
            put_exit_code(out, *exit_code);
            put_str(out, message);
        }
        AttemptOutcome::TimedOut => out.push(2),
        AttemptOutcome::Lost => out.push(3),
        AttemptOutcome::Preempted => out.push(4),
        AttemptOutcome::Cancelled => out.push(5),
        AttemptOutcome::NotReclaimed => out.push(6),
        AttemptOutcome::Withdrawn => out.push(8),
        AttemptOutcome::RetryRequested { countdown, message } => {
            out.push(7);
            put_opt(out, *countdown, put_duration);
            put_str(out, message);
        }
    }
}

fn put_attempt(out: &mut Vec<u8>, attempt: &Attempt) {
    put_varint(out, u64::from(attempt.number));
    put_varint(out, attempt.token.0);
    out.extend_from_slice(attempt.worker.0.as_bytes());
    put_varint(out, attempt.scheduled_at.0);
    put_opt(out, attempt.started_at, |w, t| put_varint(w, t.0));
    put_opt(out, attempt.finished_at, |w, t| put_varint(w, t.0));
    put_opt(out, attempt.outcome.as_ref(), put_outcome);
}

fn put_termination(out: &mut Vec<u8>, termination: &Termination) {
    match termination {
        Termination::Succeeded { result, exit_code } => {
            out.push(0);
            put_opt(out, result.as_ref().map(Json::as_str), put_str);
            put_exit_code(out, *exit_code);
        }
        Termination::Failed { last } => {
            out.push(1);
            put_outcome(out, last);
        }
        Termination::Cancelled { reason } => {
            out.push(2);
            put_str(out, reason);
        }
        Termination::Expired => out.push(3),
        Termination::SucceededStored { exit_code } => {
            out.push(4);
            put_exit_code(out, *exit_code);
        }
    }
}

// ---- reading ----

/// A cursor over a record's body; every read checks the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn finish(&self) -> Result<(), CodecError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(format!(
                "{} bytes left over after the record",
                self.bytes.len()
            )))
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() < n {
            return Err(corrupt("the record is cut short"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7F);
            if shift == 63 && bits > 1 {
                return Err(corrupt("an integer over 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("an integer over 64 bits"))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let value = self.varint()?;
        u32::try_from(value).map_err(|_| corrupt(format!("{value} is over 32 bits")))
    }

    fn signed(&mut self) -> Result<i64, CodecError> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        let value = self.signed()?;
        i32::try_from(value).map_err(|_| corrupt(format!("{value} is over 32 bits")))
    }

    /// A length, checked against the bytes left so that a damaged length cannot make the
    /// decoder reserve gigabytes.
    fn len(&mut self) -> Result<usize, CodecError> {
        let len = self.varint()?;
        match usize::try_from(len) {
            Ok(len) if len <= self.bytes.len() => Ok(len),
            _ => Err(corrupt(format!(
                "a length of {len} with {} bytes left",
                self.bytes.len()
            ))),
        }
    }

    fn str(&mut self) -> Result<&'a str, CodecError> {
        let len = self.len()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|e| corrupt(format!("text that is not UTF-8: {e}")))
    }

    fn string(&mut self) -> Result<String, CodecError> {
        self.str().map(str::to_owned)
    }

    fn json(&mut self) -> Result<Json, CodecError> {
        let text = self.str()?;
        Json::parse(text).map_err(|e| corrupt(format!("JSON value: {e}")))
    }

    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match self.byte()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(corrupt(format!("an option tag {other}"))),
        }
    }

    fn duration(&mut self) -> Result<Duration, CodecError> {
        let secs = self.varint()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(corrupt(format!("{nanos} nanoseconds")));
        }
        Ok(Duration::new(secs, nanos))
    }

    fn timestamp(&mut self) -> Result<Timestamp, CodecError> {
        Ok(Timestamp(self.varint()?))
    }

    fn map(&mut self) -> Result<BTreeMap<String, String>, CodecError> {
        let count = self.len()?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let key = self.string()?;
            map.insert(key, self.string()?);
        }
        Ok(map)
    }

    fn resources(&mut self) -> Result<Resources, CodecError> {
        let cpu = Millicores(self.varint()?);
        let memory = MiB(self.varint()?);
        let gpu = self.u32()?;
        let mut resources = Resources::new(cpu, memory, gpu);
        let count = self.len()?;
        for _ in 0..count {
            let name = ResourceName::new(self.str()?).map_err(|e| corrupt(e.to_string()))?;
            resources.set_custom(name, self.varint()?);
        }
        Ok(resources)
    }

    fn kind(&mut self) -> Result<JobKind, CodecError> {
        Ok(match self.byte()? {
            0 => {
                let count = self.len()?;
                let mut argv = Vec::with_capacity(count);
                for _ in 0..count {
                    argv.push(self.string()?);
                }
                let env = self.map()?;
                let cwd = self.opt(Self::string)?;
                JobKind::Command(Box::new(Command { argv, env, cwd }))
            }
            1 => {
                let handler: Arc<str> = self.str()?.into();
                JobKind::Function {
                    handler,
                    args: self.json()?,
                }
            }
            2 => JobKind::Stored {
                handler: self.opt(|r| r.str().map(Arc::from))?,
            },
            other => return Err(corrupt(format!("job kind {other}"))),
        })
    }

    fn spec(&mut self) -> Result<JobSpec, CodecError> {
        let kind = self.kind()?;
        let request = self.resources()?;
        let priority = self.i32()?;
        let timeout = self.opt(Self::duration)?;
        let retry = RetryPolicy {
            max_attempts: self.u32()?,
            backoff_base: self.duration()?,
            backoff_cap: self.duration()?,
            jitter: f64::from_le_bytes(self.array()?),
        };
        let expires_at = self.opt(Self::timestamp)?;
        let idempotency_key = self.opt(Self::string)?;
        let selector = self.map()?;
        let count = self.len()?;
        let mut tags = Vec::with_capacity(count);
        for _ in 0..count {
            tags.push(self.string()?);
        }
        let submitted_by = self.opt(Self::string)?;
        // A submission with every option given resolves to exactly these settings: the
        // defaults are never consulted (the timeout's default is none).
        let request = SubmitRequest {
            id: JobId(Uuid::nil()),
            queue: String::new(),
            kind,
            request: Some(request),
            priority: Some(priority),
            not_before: None,
            delay: None,
            expires_at,
            timeout,
            retry: Some(retry),
            idempotency_key,
            selector,
            tags,
            submitted_by,
            keys: BTreeMap::new(),
            retry_of: None,
            depends: None,
            workflow: None,
            auto_request: false,
            soft_timeout: None,
            pinned: None,
        };
        let defaults = JobDefaults {
            timeout: None,
            ..JobDefaults::default()
        };
        Ok(request.resolve(&defaults).0)
    }

    fn exit_code(&mut self) -> Result<Option<i32>, CodecError> {
        self.opt(Self::i32)
    }

    fn outcome(&mut self) -> Result<AttemptOutcome, CodecError> {
        Ok(match self.byte()? {
            0 => AttemptOutcome::Succeeded {
                result: self.opt(Self::json)?,
                exit_code: self.exit_code()?,
            },
            1 => AttemptOutcome::Failed {
                exit_code: self.exit_code()?,
                message: self.string()?,
            },
            2 => AttemptOutcome::TimedOut,
            3 => AttemptOutcome::Lost,
            4 => AttemptOutcome::Preempted,
            5 => AttemptOutcome::Cancelled,
            6 => AttemptOutcome::NotReclaimed,
            8 => AttemptOutcome::Withdrawn,
            7 => AttemptOutcome::RetryRequested {
                countdown: self.opt(Self::duration)?,
                message: self.string()?,
            },
            other => return Err(corrupt(format!("attempt outcome {other}"))),
        })
    }

    fn attempt(&mut self) -> Result<Attempt, CodecError> {
        Ok(Attempt {
            number: self.u32()?,
            token: FencingToken(self.varint()?),
            worker: WorkerId(Uuid::from_bytes(self.array()?)),
            scheduled_at: self.timestamp()?,
            started_at: self.opt(Self::timestamp)?,
            finished_at: self.opt(Self::timestamp)?,
            outcome: self.opt(Self::outcome)?,
        })
    }

    fn termination(&mut self) -> Result<Termination, CodecError> {
        Ok(match self.byte()? {
            0 => Termination::Succeeded {
                result: self.opt(Self::json)?,
                exit_code: self.exit_code()?,
            },
            1 => Termination::Failed {
                last: self.outcome()?,
            },
            2 => Termination::Cancelled {
                reason: self.string()?,
            },
            3 => Termination::Expired,
            4 => Termination::SucceededStored {
                exit_code: self.exit_code()?,
            },
            other => return Err(corrupt(format!("termination {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queues::{QueueConfig, QueueState};
    use serde_json::json;

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A record using every field and every optional part.
    fn full_record() -> JobRecord {
        let kind = JobKind::Command(Box::new(Command {
            argv: vec!["sh".into(), "-c".into(), "echo ü".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            cwd: Some("/tmp".into()),
        }));
        let request = SubmitRequest {
            id: JobId(uuid(1)),
            queue: "root.etl".into(),
            kind,
            request: Some(
                Resources::new(Millicores(1500), MiB(512), 1)
                    .with_custom(ResourceName::new("licence").expect("valid"), 2),
            ),
            priority: Some(-7),
            not_before: None,
            delay: None,
            expires_at: Some(Timestamp(9_000)),
            timeout: Some(Duration::new(600, 5)),
            retry: Some(RetryPolicy {
                max_attempts: 3,
                backoff_base: Duration::from_millis(250),
                backoff_cap: Duration::from_secs(60),
                jitter: 0.25,
            }),
            idempotency_key: Some("inv-1".into()),
            selector: BTreeMap::from([("zone".into(), "eu".into())]),
            tags: vec!["nightly".into(), "billing".into()],
            submitted_by: Some("etl".into()),
            keys: BTreeMap::from([("customer".into(), "acme".into())]),
            retry_of: None,
            depends: None,
            workflow: None,
            auto_request: false,
            soft_timeout: None,
            pinned: None,
        };
        let spec = request.resolve(&JobDefaults::default()).0;
        let attempt = |number: u32, outcome| Attempt {
            number,
            token: FencingToken(u64::from(number) * 1000),
            worker: WorkerId(uuid(77)),
            scheduled_at: Timestamp(1_000 + u64::from(number)),
            started_at: Some(Timestamp(1_100)),
            finished_at: Some(Timestamp(1_200)),
            outcome: Some(outcome),
        };
        JobRecord {
            id: JobId(uuid(0x0190_0000_0000_7000_8000_0000_0000_0001)),
            queue: QueuePath::parse("root.etl").expect("valid"),
            seq: 300,
            state: JobState::Succeeded,
            submitted_at: Timestamp(1_796_046_824_124),
            not_before: Some(Timestamp(1_796_046_825_000)),
            spec,
            attempts: vec![
                attempt(
                    1,
                    AttemptOutcome::Failed {
                        exit_code: Some(-9),
                        message: "killed".into(),
                    },
                ),
                attempt(2, AttemptOutcome::Lost),
                attempt(
                    3,
                    AttemptOutcome::Succeeded {
                        result: Some(Json::from_value(&json!({"ok": [1, 2]}))),
                        exit_code: Some(0),
                    },
                ),
            ],
            failures: 2,
            termination: Some(Termination::Succeeded {
                result: Some(Json::from_value(&json!({"ok": [1, 2]}))),
                exit_code: Some(0),
            }),
            finished_at: Some(Timestamp(1_796_046_830_000)),
            rate_limited_until: Some(Timestamp(1_796_046_824_500)),
            progress: None,
        }
    }

    /// [`full_record`] as format 1 held it: without format 2's fields.
    fn full_record_of_format_1() -> JobRecord {
        let record = full_record();
        JobRecord {
            spec: record.spec.clone().without_keys(),
            rate_limited_until: None,
            ..record
        }
    }

    fn function_record() -> JobRecord {
        let request =
            SubmitRequest::function(JobId(uuid(5)), "root.default", "lqsm.echo", json!({"n": 1}));
        JobRecord {
            id: JobId(uuid(5)),
            queue: QueuePath::parse("root.default").expect("valid"),
            seq: 1,
            state: JobState::Pending,
            submitted_at: Timestamp(5),
            not_before: None,
            spec: request.resolve(&JobDefaults::default()).0,
            attempts: Vec::new(),
            failures: 0,
            termination: None,
            finished_at: None,
            rate_limited_until: None,
            progress: None,
        }
    }

    #[test]
    fn job_records_round_trip_in_the_current_format() {
        for record in [full_record(), function_record()] {
            let bytes = encode_job(&record);
            assert_eq!(format_of(&bytes), Ok(CURRENT_FORMAT));
            assert_eq!(decode_job(&bytes), Ok(record));
        }
    }

    #[test]
    fn every_outcome_and_termination_round_trips() {
        let outcomes = [
            AttemptOutcome::TimedOut,
            AttemptOutcome::Lost,
            AttemptOutcome::Preempted,
            AttemptOutcome::Cancelled,
            AttemptOutcome::NotReclaimed,
            AttemptOutcome::Withdrawn,
            AttemptOutcome::Succeeded {
                result: None,
                exit_code: None,
            },
        ];
        let terminations = [
            Termination::Expired,
            Termination::Cancelled {
                reason: "by alice".into(),
            },
            Termination::Failed {
                last: AttemptOutcome::TimedOut,
            },
        ];
        let mut record = full_record();
        for (outcome, termination) in outcomes.iter().zip(terminations.iter().cycle()) {
            record.attempts[0].outcome = Some(outcome.clone());
            record.termination = Some(termination.clone());
            assert_eq!(decode_job(&encode_job(&record)), Ok(record.clone()));
        }
    }

    #[test]
    fn state_names_are_the_wire_names() {
        for state in (0..7).map(|tag| state_from(tag).expect("a state")) {
            let wire = serde_json::to_value(state).expect("serialises");
            assert_eq!(wire.as_str(), Some(state_name(state)));
        }
    }

    #[test]
    fn json_records_of_format_0_still_read() {
        for record in [full_record(), function_record()] {
            let json = serde_json::to_vec(&record).expect("serialises");
            assert_eq!(format_of(&json), Ok(0));
            assert_eq!(decode_job(&json), Ok(record));
        }
        let queue = QueueRecord {
            path: QueuePath::parse("root.etl").expect("valid"),
            config: QueueConfig::with_capacity(30.0, 100.0),
            state: QueueState::Stopped,
            counters: None,
            on_demand: false,
            note: None,
            removed_at: None,
        };
        let json = serde_json::to_vec(&queue).expect("serialises");
        assert_eq!(decode_queue(&json), Ok(queue.clone()));
        assert_eq!(decode_queue(&encode_queue(&queue)), Ok(queue));
        let template = QueueRecord {
            path: QueuePath::parse("root.users").expect("valid"),
            config: QueueConfig {
                template: Some(Box::new(crate::queues::QueueTemplate {
                    child: QueueConfig::with_capacity(5.0, 50.0),
                    idle_removal: std::time::Duration::from_secs(90),
                    max_queues: 7,
                })),
                ..QueueConfig::default()
            },
            state: QueueState::Running,
            counters: None,
            on_demand: false,
            note: None,
            removed_at: None,
        };
        let retired = QueueRecord {
            path: QueuePath::parse("root.users.alice").expect("valid"),
            config: QueueConfig::with_capacity(0.0, 50.0),
            state: QueueState::Running,
            counters: Some(crate::queues::QueueStats {
                submitted: 3,
                ..crate::queues::QueueStats::default()
            }),
            on_demand: true,
            note: Some("created with a guarantee of 0".into()),
            removed_at: Some(Timestamp(42)),
        };
        for queue in [template, retired] {
            assert_eq!(decode_queue(&encode_queue(&queue)), Ok(queue));
        }
        let kind = JobKind::function("lqsm.echo", json!({"blob": "x"}));
        let json = serde_json::to_vec(&kind).expect("serialises");
        assert_eq!(decode_payload(&json), Ok(kind.clone()));
        assert_eq!(decode_payload(&encode_payload(&kind)), Ok(kind));
    }

    #[test]
    fn a_record_of_a_newer_format_is_refused_as_newer_not_corrupt() {
        let mut bytes = vec![MARKER];
        put_varint(&mut bytes, u64::from(CURRENT_FORMAT) + 1);
        bytes.extend_from_slice(b"whatever a later release writes");
        let newer = CURRENT_FORMAT + 1;
        let expected = CodecError::NewerFormat {
            format: newer,
            newest: CURRENT_FORMAT,
        };
        assert_eq!(decode_job(&bytes), Err(expected.clone()));
        assert_eq!(decode_queue(&bytes), Err(expected.clone()));
        assert_eq!(decode_payload(&bytes), Err(expected.clone()));
        let message = expected.to_string();
        assert!(
            message.contains(&format!("written by a newer LQSM (format {newer})")),
            "{message}"
        );
    }

    #[test]
    fn damaged_records_are_reported_corrupt() {
        let bytes = encode_job(&full_record());
        for cut in [1, 2, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(decode_job(&bytes[..cut]), Err(CodecError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_job(&longer), Err(CodecError::Corrupt(_))));
        assert!(matches!(decode_job(&[]), Err(CodecError::Corrupt(_))));
        assert!(matches!(
            decode_job(b"\x01abc"),
            Err(CodecError::Corrupt(_))
        ));
        // A huge length does not make the decoder reserve memory for it.
        let mut huge = vec![MARKER, 1];
        huge.extend_from_slice(&[0; 16]);
        put_varint(&mut huge, u64::MAX);
        assert!(matches!(decode_job(&huge), Err(CodecError::Corrupt(_))));
    }

    #[test]
    fn format_1_is_far_smaller_than_json() {
        let record = function_record();
        let binary = encode_job(&record).len();
        let json = serde_json::to_vec(&record).expect("serialises").len();
        assert!(
            binary * 3 < json,
            "binary {binary} bytes, JSON {json} bytes"
        );
    }

    /// Pins the exact bytes of format 3. If this fails, the encoding changed: give the new
    /// encoding a new format number, keep a decoder for format 3, and only then update the
    /// expected bytes here.
    #[test]
    fn format_3_bytes_are_stable() {
        let bytes = encode_job(&full_record());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, FULL_RECORD_FORMAT_3);
        let mut record = full_record();
        record.spec = record.spec.with_dependencies(
            Some(Dependencies {
                parents: vec![JobId(uuid(6)), JobId(uuid(7))],
                run_when: RunWhen::AllFinished,
                pass_results: true,
            }),
            Some(WorkflowNode {
                workflow: uuid(8),
                name: "report".into(),
            }),
        );
        record.spec = record
            .spec
            .with_soft_timeout(Some(Duration::from_millis(1500)));
        record.progress = Some(Json::from_value(&json!({"pct": 50})));
        record.spec = record.spec.with_pinned(Some(WorkerId(uuid(9))));
        let bytes = encode_job(&record);
        // From the options after `retry_of` on (five absent ones in the plain record).
        let plain = encode_job(&full_record()).len();
        let tail: String = bytes[plain - 5..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(tail, FORMAT_3_DEPENDENCIES);
        assert_eq!(decode_job(&bytes), Ok(record));
    }

    fn from_hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Records written by the releases that wrote format 2 still read, as they were.
    #[test]
    fn format_2_bytes_still_read() {
        let bytes = from_hex(FULL_RECORD_FORMAT_2);
        assert_eq!(format_of(&bytes), Ok(2));
        assert_eq!(decode_job(&bytes), Ok(full_record()));
    }

    #[test]
    fn a_retry_the_job_asked_for_keeps_its_countdown_and_message() {
        let mut record = full_record();
        record.attempts[0].outcome = Some(AttemptOutcome::RetryRequested {
            countdown: Some(Duration::from_secs(30)),
            message: "the API is busy".into(),
        });
        assert_eq!(decode_job(&encode_job(&record)), Ok(record.clone()));
        // A result kept apart in the store leaves only its mark in the record.
        record.termination = Some(Termination::SucceededStored { exit_code: Some(0) });
        assert_eq!(decode_job(&encode_job(&record)), Ok(record));
    }

    #[test]
    fn a_re_run_keeps_its_link_to_the_job_it_runs_again() {
        let mut record = full_record();
        record.spec = record.spec.with_retry_of(Some(JobId(uuid(5))));
        let decoded = decode_job(&encode_job(&record)).expect("decodes");
        assert_eq!(decoded.spec.retry_of(), Some(JobId(uuid(5))));
        assert_eq!(decoded, record);
    }

    /// Records written by the releases that wrote format 1 still read, as they were.
    #[test]
    fn format_1_bytes_still_read() {
        let bytes = from_hex(FULL_RECORD_FORMAT_1);
        assert_eq!(format_of(&bytes), Ok(1));
        assert_eq!(decode_job(&bytes), Ok(full_record_of_format_1()));
    }

    const FULL_RECORD_FORMAT_3: &str = concat!(
        "b7030190000000007000800000000000000108726f6f742e65746cac0203bcc5eee5a23401a8ccee",
        "e5a2340003027368022d63076563686f20c3bc010141013101042f746d70dc0b80040101076c6963",
        "656e6365020d01d80405030080e59a773c00000000000000d03f01a8460105696e762d3101047a6f",
        "6e6502657502076e696768746c790762696c6c696e67010365746c0301e807000000000000000000",
        "0000000000004de90701cc0801b00901010111066b696c6c656402d00f0000000000000000000000",
        "000000004dea0701cc0801b009010303b8170000000000000000000000000000004deb0701cc0801",
        "b0090100010c7b226f6b223a5b312c325d7d0100020100010c7b226f6b223a5b312c325d7d010001",
        "b0f3eee5a2340108637573746f6d65720461636d6501b4c8eee5a234000000000000",
    );

    /// The last bytes of a record with every field of format 3: two parents,
    /// `all_finished`, results passed; the workflow's id and the node's name; a soft
    /// timeout of 1.5 s; the worker it is pinned to; a progress of `{"pct":50}`.
    const FORMAT_3_DEPENDENCIES: &str = concat!(
        "0102000000000000000000000000000000060000000000000000000000000000000701010100000000",
        "000000000000000000000008067265706f7274010180cab5ee01010000000000000000000000000000",
        "0009010a7b22706374223a35307d",
    );

    const FULL_RECORD_FORMAT_2: &str = concat!(
        "b7020190000000007000800000000000000108726f6f742e65746cac0203bcc5eee5a23401a8ccee",
        "e5a2340003027368022d63076563686f20c3bc010141013101042f746d70dc0b80040101076c6963",
        "656e6365020d01d80405030080e59a773c00000000000000d03f01a8460105696e762d3101047a6f",
        "6e6502657502076e696768746c790762696c6c696e67010365746c0301e807000000000000000000",
        "0000000000004de90701cc0801b00901010111066b696c6c656402d00f0000000000000000000000",
        "000000004dea0701cc0801b009010303b8170000000000000000000000000000004deb0701cc0801",
        "b0090100010c7b226f6b223a5b312c325d7d0100020100010c7b226f6b223a5b312c325d7d010001",
        "b0f3eee5a2340108637573746f6d65720461636d6501b4c8eee5a23400",
    );

    const FULL_RECORD_FORMAT_1: &str = concat!(
        "b7010190000000007000800000000000000108726f6f742e65746cac0203bcc5eee5a23401a8ccee",
        "e5a2340003027368022d63076563686f20c3bc010141013101042f746d70dc0b80040101076c6963",
        "656e6365020d01d80405030080e59a773c00000000000000d03f01a8460105696e762d3101047a6f",
        "6e6502657502076e696768746c790762696c6c696e67010365746c0301e807000000000000000000",
        "0000000000004de90701cc0801b00901010111066b696c6c656402d00f0000000000000000000000",
        "000000004dea0701cc0801b009010303b8170000000000000000000000000000004deb0701cc0801",
        "b0090100010c7b226f6b223a5b312c325d7d0100020100010c7b226f6b223a5b312c325d7d010001",
        "b0f3eee5a234",
    );
}
