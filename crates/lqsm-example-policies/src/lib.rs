//! Policies of this program's own, registered beside LQSM's built-ins. A queue selects
//! one by name (`"ordering": "deadline-first"`) through the API or the config file,
//! exactly as it selects a built-in; the core applies its invariants whatever a policy
//! decides.

use lqsm_core::policy::OrderingPolicy;
use lqsm_core::{JobSpec, Policies};
use std::sync::Arc;

/// The name queues select [`DeadlineFirst`] by.
pub const DEADLINE_FIRST: &str = "deadline-first";

/// Earliest deadline first: a job's `deadline` key, in Unix seconds, is its rank. Jobs
/// without one (or with one that is not a whole number) come after every job with one,
/// in submission order.
#[derive(Debug, Default)]
pub struct DeadlineFirst;

impl OrderingPolicy for DeadlineFirst {
    fn name(&self) -> &str {
        DEADLINE_FIRST
    }

    fn rank(&self, spec: &JobSpec) -> i64 {
        spec.keys()
            .get("deadline")
            .and_then(|d| d.trim().parse::<i64>().ok())
            .unwrap_or(i64::MAX)
    }
}

/// LQSM's built-in policies and this program's.
pub fn policies() -> Policies {
    let mut policies = Policies::default();
    policies.register_ordering(Arc::new(DeadlineFirst));
    policies
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

    use super::*;
    use lqsm_core::{JobDefaults, JobId, JobKind, SubmitRequest};
    use std::collections::BTreeMap;

    fn spec(deadline: Option<&str>) -> JobSpec {
        let mut request = SubmitRequest::new(
            JobId(uuid::Uuid::nil()),
            "root.q",
            JobKind::command(["true"]),
        );
        if let Some(d) = deadline {
            request.keys = BTreeMap::from([("deadline".to_owned(), d.to_owned())]);
        }
        request.into_spec(&JobDefaults::default())
    }

    #[test]
    fn earlier_deadlines_rank_first_and_jobs_without_one_last() {
        let policy = DeadlineFirst;
        assert!(policy.rank(&spec(Some("100"))) < policy.rank(&spec(Some("200"))));
        assert_eq!(policy.rank(&spec(Some(" 150 "))), 150);
        assert_eq!(policy.rank(&spec(None)), i64::MAX);
        assert_eq!(policy.rank(&spec(Some("tomorrow"))), i64::MAX);
    }
}
