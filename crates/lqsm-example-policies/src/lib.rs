//! Policies of this program's own, registered beside LQSM's built-ins. A queue selects
//! one by name (`"ordering": "deadline-first"`) through the API or the config file,
//! exactly as it selects a built-in, and a worker pool selects an autoscaling policy
//! (`policy = "spill-over"`) the same way; the core applies its invariants whatever a
//! policy decides.

use lqsm_core::autoscale::{
    AutoscalingPolicy, PoolSnapshot, PoolSpec, ScaleDecision, whole_workers,
};
use lqsm_core::policy::OrderingPolicy;
use lqsm_core::{JobSpec, Policies, Timestamp};
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

/// The name pools select [`SpillOver`] by.
pub const SPILL_OVER: &str = "spill-over";

/// Cheapest pool first, for the dearer pool of two that run the same jobs (on-demand
/// instances behind spot ones, cloud behind the machines already paid for). The cheaper
/// pool keeps the built-in `target-backlog`; the dearer one selects this policy and
/// starts workers only for the backlog the cheaper one could not take even at its most
/// workers: `max(0, backlog − cheaper_max × target_backlog_per_worker)`, at the pool's
/// own target backlog per worker, plus the workers its running jobs keep busy (as the
/// built-in counts them), so that nothing it runs is drained. Each pool sees the whole
/// backlog its workers could run; this policy is what keeps both from chasing it.
#[derive(Debug, Clone, Copy)]
pub struct SpillOver {
    /// The cheaper pool's `max`: what it can take before this pool is needed.
    pub cheaper_max: u32,
}

impl AutoscalingPolicy for SpillOver {
    fn name(&self) -> &str {
        SPILL_OVER
    }

    fn decide(&self, pool: &PoolSpec, snapshot: &PoolSnapshot, _now: Timestamp) -> ScaleDecision {
        let per_worker = pool.target_backlog_per_worker.max(f64::MIN_POSITIVE);
        let cheaper_takes = f64::from(self.cheaper_max) * per_worker;
        let overflow = (snapshot.backlog as f64 - cheaper_takes).max(0.0);
        let for_overflow = whole_workers(overflow / per_worker);
        let utilisation = pool.target_utilisation.clamp(f64::MIN_POSITIVE, 1.0);
        let for_running = whole_workers(snapshot.in_use() / utilisation - 1e-9);
        let wanted = for_overflow.saturating_add(for_running);
        let desired = wanted.clamp(pool.min, pool.max.max(pool.min));
        let reason = format!(
            "{} waiting, the cheaper pool takes {cheaper_takes} at its max {}: {for_overflow} \
             for the rest, {for_running} for what runs here; {desired} within [{}, {}]",
            snapshot.backlog, self.cheaper_max, pool.min, pool.max
        );
        ScaleDecision { desired, reason }
    }
}

/// LQSM's built-in policies and this program's; `cheaper_pool_max` is the `max` of the
/// pool that [`SpillOver`] pools spill over from.
pub fn policies(cheaper_pool_max: u32) -> Policies {
    let mut policies = Policies::default();
    policies.register_ordering(Arc::new(DeadlineFirst));
    policies.register_autoscaling(Arc::new(SpillOver {
        cheaper_max: cheaper_pool_max,
    }));
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

    fn snapshot(backlog: u64) -> PoolSnapshot {
        PoolSnapshot {
            backlog,
            ..PoolSnapshot::default()
        }
    }

    #[test]
    fn the_dearer_pool_takes_only_what_the_cheaper_cannot_at_its_max() {
        let policy = SpillOver { cheaper_max: 4 };
        let pool = PoolSpec {
            target_backlog_per_worker: 2.0,
            ..PoolSpec::new("on-demand", lqsm_core::Resources::cores(1, 1024), 0, 5)
        };
        let desired = |backlog| {
            policy
                .decide(&pool, &snapshot(backlog), Timestamp(0))
                .desired
        };
        // The cheaper pool at 4 workers takes 8 waiting jobs.
        assert_eq!(desired(0), 0);
        assert_eq!(desired(8), 0);
        assert_eq!(desired(9), 1);
        assert_eq!(desired(12), 2);
        // Within the pool's own max.
        assert_eq!(desired(1_000), 5);
        let reason = policy.decide(&pool, &snapshot(12), Timestamp(0)).reason;
        assert!(reason.contains("12 waiting"), "{reason}");
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
