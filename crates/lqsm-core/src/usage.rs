//! What attempts used, as their workers measured it, kept per leaf queue and job name
//! (a function's handler, a command's program): the figures `auto` requests follow.

use crate::jobs::{JobKind, JobSpec, Usage};
use crate::queues::AutoResources;
use crate::resources::{MiB, Millicores, Resources};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;

/// How many of the latest attempts a name keeps: enough for a stable 95th percentile,
/// few enough that the figures follow a change of the work within a few hundred runs.
pub const USAGE_WINDOW: usize = 256;

/// The most names a leaf keeps figures for; attempts of further names are not counted
/// (a queue running thousands of distinct programs gets figures for the first ones).
pub const MAX_USAGE_NAMES: usize = 256;

/// The name a job's attempts are counted under: its handler, or its program's file
/// name; `None` for a stored command, whose program the core does not hold.
pub fn usage_name(spec: &JobSpec) -> Option<Arc<str>> {
    match &spec.kind {
        JobKind::Function { handler, .. }
        | JobKind::Stored {
            handler: Some(handler),
        } => Some(handler.clone()),
        JobKind::Command(command) => {
            let program = command.argv.first()?;
            let name = program.rsplit('/').next().unwrap_or(program);
            Some(Arc::from(name))
        }
        JobKind::Stored { handler: None } => None,
    }
}

/// One attempt's use: its peak memory and its mean cpu over its run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Sample {
    memory: MiB,
    cpu: Millicores,
    /// What its job asked for.
    requested: (Millicores, MiB),
}

/// The latest attempts of one name.
#[derive(Clone, Debug, Default)]
pub struct UsageStats {
    samples: VecDeque<Sample>,
    /// Attempts counted in all, beyond the window too.
    total: u64,
    /// The window's 95th percentiles (memory, cpu), kept from one change of the window to
    /// the next: every submission sized from them reads them, and attempts end far less
    /// often than a batch of submissions asks.
    p95: Cell<Option<(MiB, Millicores)>>,
}

impl UsageStats {
    /// Counts one attempt that ran `run_ms` with `usage`, for a job that asked `request`.
    pub fn record(&mut self, usage: Usage, run_ms: u64, request: &Resources) {
        let cpu = Millicores(usage.cpu_ms.saturating_mul(1000) / run_ms.max(1));
        if self.samples.len() == USAGE_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            memory: usage.peak_memory,
            cpu,
            requested: (request.cpu, request.memory),
        });
        self.total += 1;
        self.p95.set(None);
    }

    /// Attempts in the window.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// The figures of the window.
    pub fn summary(&self) -> UsageSummary {
        let mut memory: Vec<u64> = self.samples.iter().map(|s| s.memory.0).collect();
        let mut cpu: Vec<u64> = self.samples.iter().map(|s| s.cpu.0).collect();
        memory.sort_unstable();
        cpu.sort_unstable();
        let n = self.samples.len().max(1) as u64;
        let mean = |f: &dyn Fn(&Sample) -> u64| self.samples.iter().map(f).sum::<u64>() / n;
        UsageSummary {
            attempts: self.total,
            window: self.samples.len(),
            requested: Resources::new(
                Millicores(mean(&|s| s.requested.0.0)),
                MiB(mean(&|s| s.requested.1.0)),
                0,
            ),
            memory_p50: MiB(percentile(&memory, 50)),
            memory_p95: MiB(percentile(&memory, 95)),
            memory_max: MiB(memory.last().copied().unwrap_or(0)),
            cpu_p50: Millicores(percentile(&cpu, 50)),
            cpu_p95: Millicores(percentile(&cpu, 95)),
        }
    }

    /// The request `auto` gives a job of this name: the 95th percentiles times the
    /// margin, within the bounds; `None` until enough attempts were observed. Only cpu
    /// and memory are sized: gpus and custom resources stay as `base` has them.
    pub fn auto_request(&self, auto: &AutoResources, base: &Resources) -> Option<Resources> {
        if self.samples.len() < auto.min_samples.max(1) as usize {
            return None;
        }
        let (memory_p95, cpu_p95) = self.p95s();
        let scale = |v: u64| (v as f64 * auto.margin).ceil() as u64;
        let mut cpu = scale(cpu_p95.0).max(auto.min.cpu.0);
        let mut memory = scale(memory_p95.0).max(auto.min.memory.0);
        if let Some(max) = &auto.max {
            cpu = cpu.min(max.cpu.0);
            memory = memory.min(max.memory.0);
        }
        let mut sized = base.clone();
        sized.cpu = Millicores(cpu);
        sized.memory = MiB(memory);
        Some(sized)
    }

    /// The window's 95th percentiles of memory and cpu, worked out once per change.
    fn p95s(&self) -> (MiB, Millicores) {
        if let Some(known) = self.p95.get() {
            return known;
        }
        let summary = self.summary();
        let known = (summary.memory_p95, summary.cpu_p95);
        self.p95.set(Some(known));
        known
    }
}

/// The nearest-rank `p`th percentile of sorted values (0 when there are none).
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A name's figures over its latest attempts.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct UsageSummary {
    /// Attempts counted since the leader started.
    pub attempts: u64,
    /// Attempts the figures below are taken over (at most [`USAGE_WINDOW`]).
    pub window: usize,
    /// What their jobs asked for, on average (cpu and memory).
    pub requested: Resources,
    /// Median peak memory.
    pub memory_p50: MiB,
    /// 95th percentile of peak memory.
    pub memory_p95: MiB,
    /// Largest peak memory.
    pub memory_max: MiB,
    /// Median of the cpu used on average over an attempt's run.
    pub cpu_p50: Millicores,
    /// Its 95th percentile.
    pub cpu_p95: Millicores,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(samples: &[(u64, u64)]) -> UsageStats {
        let mut stats = UsageStats::default();
        for &(memory, cpu_ms) in samples {
            let usage = Usage {
                peak_memory: MiB(memory),
                cpu_ms,
            };
            stats.record(usage, 1000, &Resources::cores(1, 400));
        }
        stats
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 95), 95);
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&[7], 95), 7);
        assert_eq!(percentile(&[], 95), 0);
    }

    #[test]
    fn auto_is_the_95th_percentile_times_the_margin_within_bounds() {
        let samples: Vec<(u64, u64)> = (1..=20).map(|i| (i * 10, i * 10)).collect();
        let stats = stats(&samples);
        let auto = AutoResources::default();
        let base = Resources::new(Millicores(1000), MiB(400), 1);
        let sized = stats.auto_request(&auto, &base).expect("enough samples");
        // p95 of 10..=200 is 190: 228 MiB; cpu 190 ms a second: 0.228 cores.
        assert_eq!(
            (sized.cpu, sized.memory, sized.gpu),
            (Millicores(228), MiB(228), 1)
        );
        let bounded = AutoResources {
            max: Some(Resources::new(Millicores(100), MiB(150), 0)),
            ..AutoResources::default()
        };
        let sized = stats.auto_request(&bounded, &base).expect("enough samples");
        assert_eq!((sized.cpu, sized.memory), (Millicores(100), MiB(150)));
        let tiny = self::stats(&[(1, 0); 5]);
        let sized = tiny.auto_request(&auto, &base).expect("enough samples");
        assert_eq!((sized.cpu, sized.memory), (Millicores(50), MiB(32)));
    }

    #[test]
    fn too_few_attempts_give_no_auto_request_and_the_window_slides() {
        let auto = AutoResources::default();
        assert!(
            stats(&[(100, 0); 4])
                .auto_request(&auto, &Resources::default())
                .is_none()
        );
        let mut many = stats(&[(1000, 0); USAGE_WINDOW]);
        for _ in 0..USAGE_WINDOW {
            many.record(
                Usage {
                    peak_memory: MiB(10),
                    cpu_ms: 0,
                },
                1000,
                &Resources::cores(1, 400),
            );
        }
        let summary = many.summary();
        assert_eq!(
            (summary.attempts, summary.window),
            (2 * USAGE_WINDOW as u64, USAGE_WINDOW)
        );
        assert_eq!(summary.memory_max, MiB(10));
        assert_eq!(summary.requested.memory, MiB(400));
    }

    #[test]
    fn the_auto_request_follows_attempts_recorded_after_it_was_read() {
        let auto = AutoResources::default();
        let base = Resources::cores(1, 400);
        let mut stats = stats(&[(100, 0); 5]);
        let before = stats.auto_request(&auto, &base).expect("enough samples");
        assert_eq!(before.memory, MiB(120));
        for _ in 0..USAGE_WINDOW {
            stats.record(
                Usage {
                    peak_memory: MiB(200),
                    cpu_ms: 0,
                },
                1000,
                &base,
            );
        }
        let after = stats.auto_request(&auto, &base).expect("enough samples");
        assert_eq!(after.memory, MiB(240));
    }

    #[test]
    fn a_command_is_counted_under_its_programs_file_name() {
        let spec = |kind| {
            crate::jobs::SubmitRequest::new(crate::JobId(uuid::Uuid::nil()), "root", kind)
                .resolve(&crate::queues::JobDefaults::default())
                .0
        };
        let command = spec(JobKind::command(["/usr/bin/python3", "-c", "x"]));
        assert_eq!(usage_name(&command).as_deref(), Some("python3"));
        let function = spec(JobKind::function(
            "billing.invoice",
            serde_json::json!(null),
        ));
        assert_eq!(usage_name(&function).as_deref(), Some("billing.invoice"));
    }
}
