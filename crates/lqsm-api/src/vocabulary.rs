//! The closed sets of names the wire uses (job states, attempt outcomes, error codes...),
//! as enums. Each serialises as the snake_case string the wire has always carried, is
//! listed in the OpenAPI document, and prints (`Display`) as that same name, so what a
//! person reads is what a program matches on.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// A name that is not one of an enum's wire names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What the set is called (`job state`).
    pub what: &'static str,
    /// The name given.
    pub given: String,
    /// Every valid name, comma-separated.
    pub expected: String,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a {} (expected one of: {})",
            self.given, self.what, self.expected
        )
    }
}

impl std::error::Error for UnknownName {}

/// Declares a wire enum: serde and OpenAPI names, `as_str`, `ALL`, `Display`, `FromStr`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        // Ordered by wire name, so maps keyed by these enums list their keys as maps
        // keyed by the names always did.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        given: s.to_owned(),
                        expected: Self::ALL
                            .iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}

wire_enum! {
    /// Where a job is in its life.
    JobState, "job state" {
        /// Waiting for its turn (or for `not_before`).
        Pending => "pending",
        /// Given to a worker, not yet confirmed running.
        Scheduled => "scheduled",
        /// Running on a worker.
        Running => "running",
        /// Finished well.
        Succeeded => "succeeded",
        /// Failed for good (retries used up).
        Failed => "failed",
        /// Cancelled.
        Cancelled => "cancelled",
        /// Not started before its `expires_at_ms`.
        Expired => "expired",
    }
}

impl JobState {
    /// Whether the job has finished and will not change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Expired
        )
    }
}

wire_enum! {
    /// When a job that waits for others may run, once each parent has ended (after its
    /// own retries).
    RunWhen, "run-when condition" {
        /// Every parent succeeded; otherwise it is cancelled with reason
        /// `dependency_failed` naming the parent.
        AllSucceeded => "all_succeeded",
        /// Every parent ended, however it ended.
        AllFinished => "all_finished",
    }
}

wire_enum! {
    /// Where a workflow is, from its jobs' states.
    WorkflowState, "workflow state" {
        /// Some job has not ended.
        Running => "running",
        /// Every job succeeded.
        Succeeded => "succeeded",
        /// Every job ended, and one failed or expired.
        Failed => "failed",
        /// Every job ended, none failed, and one was cancelled.
        Cancelled => "cancelled",
    }
}

wire_enum! {
    /// How an attempt ended.
    AttemptOutcome, "attempt outcome" {
        /// It succeeded.
        Succeeded => "succeeded",
        /// It failed (see the attempt's `message`).
        Failed => "failed",
        /// It ran past its timeout.
        TimedOut => "timed_out",
        /// Its worker was lost.
        Lost => "lost",
        /// Preemption took its resources back.
        Preempted => "preempted",
        /// Its job was cancelled.
        Cancelled => "cancelled",
        /// Its worker did not confirm stopping it in time.
        NotReclaimed => "not_reclaimed",
        /// Its worker stopped polling before it was handed over: it never started, was
        /// placed again, and used none of the job's attempts.
        Withdrawn => "withdrawn",
        /// The job asked to be run again (Celery's `self.retry`): it used an attempt.
        RetryRequested => "retry_requested",
    }
}

wire_enum! {
    /// Where a worker is in its life.
    WorkerState, "worker state" {
        /// Takes new work.
        Active => "active",
        /// Finishes what it holds, takes nothing new.
        Draining => "draining",
        /// Missed its heartbeats; must register again.
        Lost => "lost",
    }
}

wire_enum! {
    /// Whether a queue accepts and runs jobs.
    QueueState, "queue state" {
        /// Accepts and runs jobs.
        Running => "running",
        /// Accepts nothing and starts nothing; running attempts go on.
        Stopped => "stopped",
        /// Accepts nothing new; runs what it holds.
        Draining => "draining",
    }
}

wire_enum! {
    /// Why the server orders a worker to stop an attempt.
    KillReason, "kill reason" {
        /// Its job was cancelled.
        Cancelled => "cancelled",
        /// It ran past its timeout.
        TimedOut => "timed_out",
        /// Preemption takes its resources back.
        Preempted => "preempted",
        /// The server no longer counts it as the job's current attempt.
        Stale => "stale",
    }
}

wire_enum! {
    /// Why the server refused a worker's report.
    RefusalReason, "refusal reason" {
        /// The server holds no such job (finished and forgotten, or never existed).
        UnknownJob => "unknown_job",
        /// The attempt is not the job's current one (its token is old).
        StaleAttempt => "stale_attempt",
    }
}

wire_enum! {
    /// The machine-readable code of an error answer (`ErrorDetail.code`).
    ErrorCode, "error code" {
        /// A field has a bad value (`field` names it).
        InvalidField => "invalid_field",
        /// A required field is missing (`field` names it).
        MissingField => "missing_field",
        /// A field the server does not know (a typo, or a newer client).
        UnknownField => "unknown_field",
        /// The body is not valid JSON.
        InvalidJson => "invalid_json",
        /// The body could not be read.
        InvalidBody => "invalid_body",
        /// The body or a job is larger than the server's limit.
        PayloadTooLarge => "payload_too_large",
        /// No such job, queue, worker or endpoint.
        NotFound => "not_found",
        /// The endpoint does not take that method.
        MethodNotAllowed => "method_not_allowed",
        /// The change conflicts with what exists (a queue already there, a job finished).
        Conflict => "conflict",
        /// The queue is stopped or draining and takes no new jobs.
        NotAccepting => "not_accepting",
        /// The queue holds its most pending jobs; retry later.
        QueueFull => "queue_full",
        /// The queue's admission policy refused the job.
        Refused => "refused",
        /// The server does not know this worker (restarted, or lost it): register again.
        RegisterAgain => "register_again",
        /// The poll was sent for an earlier registration of the worker than its
        /// latest: nothing was taken from it. Drop its answer; its reports ride on
        /// the next poll.
        StaleRegistration => "stale_registration",
        /// The worker speaks a protocol version this server does not accept.
        IncompatibleProtocol => "incompatible_protocol",
        /// No token, or an unknown one.
        Unauthorized => "unauthorized",
        /// The token's role does not allow this.
        Forbidden => "forbidden",
        /// The server is starting, shutting down, or its store failed; retry elsewhere or later.
        Unavailable => "unavailable",
        /// Too many failed authentications from this client; retry after `Retry-After`.
        TooManyRequests => "too_many_requests",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_serde_names_and_parse_back() {
        fn check<T>(all: &[T])
        where
            T: Copy + Serialize + FromStr + fmt::Display + PartialEq + fmt::Debug,
            <T as FromStr>::Err: fmt::Debug,
        {
            for v in all {
                let json = serde_json::to_string(v).expect("enums serialise");
                assert_eq!(json, format!("\"{v}\""));
                assert_eq!(v.to_string().parse::<T>().expect("own name parses"), *v);
            }
        }
        check(JobState::ALL);
        check(AttemptOutcome::ALL);
        check(WorkerState::ALL);
        check(QueueState::ALL);
        check(KillReason::ALL);
        check(RefusalReason::ALL);
        check(ErrorCode::ALL);
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let err = "done".parse::<JobState>().expect_err("not a state");
        assert_eq!(
            err.to_string(),
            "`done` is not a job state (expected one of: pending, scheduled, running, succeeded, failed, cancelled, expired)"
        );
    }
}
