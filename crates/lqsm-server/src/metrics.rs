//! Prometheus figures: counters as things happen, gauges computed at scrape time.

use lqsm_core::{Effects, ResourceManager};

/// Counts what a committed batch did.
pub fn record_effects(rm: &ResourceManager, effects: &Effects) {
    metrics::counter!("lqsm_attempts_started_total").increment(effects.attempts_made);
    for id in &effects.finished {
        let Some(job) = rm.job(*id) else { continue };
        let queue = rm
            .queue_path(job.queue)
            .map(|p| p.to_string())
            .unwrap_or_default();
        let state = crate::convert::job_state(job.state).as_str();
        metrics::counter!("lqsm_jobs_finished_total", "queue" => queue, "state" => state)
            .increment(1);
    }
}

/// Counts accepted submissions by queue.
pub fn record_submitted(queue: &str, n: u64) {
    metrics::counter!("lqsm_jobs_submitted_total", "queue" => queue.to_owned()).increment(n);
}

/// Sets the per-queue gauges from the last published view.
pub fn record_gauges(view: &crate::view::ClusterView) {
    for queue in view.queues.values() {
        let stats = &queue.stats;
        let name = queue.path.clone();
        metrics::gauge!("lqsm_queue_pending", "queue" => name.clone()).set(stats.pending as f64);
        metrics::gauge!("lqsm_queue_running", "queue" => name.clone()).set(queue.running as f64);
        metrics::gauge!("lqsm_queue_used_cpu_cores", "queue" => name.clone())
            .set(queue.used.cpu.0 as f64 / 1000.0);
        metrics::gauge!("lqsm_queue_used_memory_mib", "queue" => name)
            .set(queue.used.memory.0 as f64);
    }
    metrics::gauge!("lqsm_workers").set(view.workers.len() as f64);
    metrics::gauge!("lqsm_jobs_held").set(view.jobs_held as f64);
}
