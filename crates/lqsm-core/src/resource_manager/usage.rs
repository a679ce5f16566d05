//! Right-sizing: what attempts used, kept per leaf and job name; the requests `auto`
//! gives from it; and more memory for an attempt killed for exceeding its own.

use super::ResourceManager;
use crate::ids::Timestamp;
use crate::jobs::{AttemptOutcome, AttemptReport, JobKey, JobSpec, ReportedResult};
use crate::queues::AutoResources;
use crate::queues::QueueConfig;
use crate::resources::{MiB, Resources};
use crate::usage::{MAX_USAGE_NAMES, usage_name};

impl ResourceManager {
    /// Counts a report's measured use under its job's leaf and name. Called before the
    /// report is applied, while the attempt's times are known.
    pub(crate) fn note_usage(&mut self, key: JobKey, report: &AttemptReport, now: Timestamp) {
        let Some(usage) = report.usage else {
            return;
        };
        let job = &self.jobs[key];
        let Some(name) = usage_name(&job.spec) else {
            return;
        };
        let Some(attempt) = job.attempts.last() else {
            return;
        };
        let started = attempt.started_at.unwrap_or(attempt.scheduled_at);
        let run_ms = now.since(started).as_millis() as u64;
        let request = job.spec.request.clone();
        let Some(Some(leaf)) = self.queues.get_mut(job.queue.0 as usize) else {
            return;
        };
        if !leaf.usage.contains_key(&name) && leaf.usage.len() >= MAX_USAGE_NAMES {
            return;
        }
        leaf.usage
            .entry(name)
            .or_default()
            .record(usage, run_ms, &request);
    }

    /// The request a new job of `config`'s leaf gets: sized from its name's attempts when
    /// the leaf right-sizes jobs that name no resources (`named` false) or the job asks
    /// for `auto`; `spec`'s own request otherwise, or before enough were observed.
    pub(crate) fn sized_request(
        &self,
        leaf: &super::queues::QueueNode,
        spec: &JobSpec,
        named: bool,
        asked_auto: bool,
    ) -> Option<Resources> {
        let auto = match (&leaf.config.auto_resources, asked_auto, named) {
            (Some(auto), _, false) | (Some(auto), true, true) => auto.clone(),
            (None, true, _) => AutoResources::default(),
            _ => return None,
        };
        let name = usage_name(spec)?;
        leaf.usage.get(&name)?.auto_request(&auto, &spec.request)
    }

    /// The memory a job whose attempt was killed for exceeding its own asks for next:
    /// twice it, up to the leaf's right-sizing bound or else the most any worker offers;
    /// `None` when it cannot grow (already at the bound).
    fn grown_memory(&self, key: JobKey) -> Option<MiB> {
        let job = &self.jobs[key];
        let cap = self
            .queues
            .get(job.queue.0 as usize)
            .and_then(Option::as_ref)
            .and_then(|leaf| memory_bound(&leaf.config))
            .unwrap_or_else(|| {
                MiB(self
                    .workers
                    .values()
                    .map(|w| w.capacity.memory.0)
                    .max()
                    .unwrap_or(0))
            });
        let asked = job.spec.request.memory;
        let grown = MiB(asked.0.saturating_mul(2).max(1).min(cap.0));
        (grown > asked).then_some(grown)
    }

    /// Ends an attempt its worker killed for exceeding its memory. While the job's
    /// request can grow, the job runs again at once with twice the memory and the
    /// attempt does not count against its retries (it asked for too little, it did not
    /// fail); at the bound it is an ordinary failure. Returns false when the report is
    /// not such a failure, for the caller to apply it as usual.
    pub(crate) fn retry_with_more_memory(
        &mut self,
        key: JobKey,
        report: &AttemptReport,
        now: Timestamp,
    ) -> bool {
        let ReportedResult::Failed {
            exit_code, message, ..
        } = &report.result
        else {
            return false;
        };
        if !report.memory_exceeded {
            return false;
        }
        let Some(grown) = self.grown_memory(key) else {
            return false;
        };
        let outcome = AttemptOutcome::Failed {
            exit_code: *exit_code,
            message: format!(
                "{message}; runs again with {} MiB, not counted against its retries",
                grown.0
            ),
        };
        // The attempt releases what it held under the old request first.
        self.end_attempt(key, outcome, None, now);
        let job = &mut self.jobs[key];
        job.failures = job.failures.saturating_sub(1);
        job.spec.request.memory = grown;
        if let Some(Some(leaf)) = self.queues.get(job.queue.0 as usize) {
            job.rank = leaf.ordering.rank(&job.spec);
        }
        self.make_ready(key, now, false);
        true
    }
}

fn memory_bound(config: &QueueConfig) -> Option<MiB> {
    Some(config.auto_resources.as_ref()?.max.as_ref()?.memory)
}
