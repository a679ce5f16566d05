//! The cluster's figures once a second over the last hour, for the dashboard's charts
//! (`GET /v1/cluster/history`).
//!
//! Only the leader samples: it holds the figures, and followers pass the read to it like
//! every read of the leader's memory. The samples live in the leader's memory only, so a
//! new leader starts its hour afresh; they are a picture of the recent past, not a record.

use crate::view::ClusterView;
use lqsm_api as api;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Time between samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples kept: an hour of them.
pub const SAMPLES_KEPT: usize = 3600;

/// The last hour of samples.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<api::ClusterSample>>,
}

impl History {
    /// Adds a sample, dropping the oldest past an hour's worth.
    pub fn record(&self, sample: api::ClusterSample) {
        let mut samples = self.lock();
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Forgets every sample (this server stopped leading: its hour no longer continues).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The samples at or after `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> api::ClusterHistory {
        let samples = self.lock();
        let first = samples.partition_point(|s| s.at_ms < since_ms);
        api::ClusterHistory {
            interval_ms: SAMPLE_EVERY.as_millis() as u64,
            samples: samples.range(first..).cloned().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<api::ClusterSample>> {
        // A panic while holding this lock leaves a deque of whole samples: still usable.
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The figures of one sample from a published view.
pub fn sample(view: &ClusterView, at_ms: u64) -> api::ClusterSample {
    let root = view.queue("root");
    let (used, pending, running, stats) = match root {
        Some(root) => (
            root.used.clone(),
            root.stats.pending,
            root.running,
            Some(&root.stats),
        ),
        None => (Default::default(), 0, 0, None),
    };
    let finished = stats.map_or(0, |s| s.succeeded + s.failed + s.cancelled + s.expired);
    api::ClusterSample {
        at_ms,
        cpu_total: view.total.cpu.0 as f64 / 1000.0,
        cpu_used: used.cpu.0 as f64 / 1000.0,
        memory_total_mib: view.total.memory.0,
        memory_used_mib: used.memory.0,
        pending,
        running,
        submitted: stats.map_or(0, |s| s.submitted),
        finished,
        failed: stats.map_or(0, |s| s.failed),
        workers_active: view
            .workers
            .iter()
            .filter(|w| w.state == lqsm_core::WorkerState::Active)
            .count() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> api::ClusterSample {
        api::ClusterSample {
            at_ms: ms,
            cpu_total: 4.0,
            cpu_used: 1.0,
            memory_total_mib: 1024,
            memory_used_mib: 256,
            pending: 3,
            running: 1,
            submitted: ms,
            finished: ms / 2,
            failed: 0,
            workers_active: 1,
        }
    }

    #[test]
    fn keeps_the_last_hour_oldest_first() {
        let history = History::default();
        for second in 0..(SAMPLES_KEPT as u64 + 10) {
            history.record(at(second * 1000));
        }
        let all = history.since(0);
        assert_eq!(all.samples.len(), SAMPLES_KEPT);
        assert_eq!(all.samples[0].at_ms, 10_000, "the 10 oldest were dropped");
        assert_eq!(
            all.samples.last().map(|s| s.at_ms),
            Some((SAMPLES_KEPT as u64 + 9) * 1000)
        );
        let recent = history.since((SAMPLES_KEPT as u64 + 5) * 1000);
        assert_eq!(recent.samples.len(), 5);
        history.clear();
        assert!(history.since(0).samples.is_empty());
    }
}
