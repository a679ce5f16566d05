//! Memory held by the core for a million pending jobs, counted by a wrapping allocator.
#![allow(unsafe_code)]

use lqsm_core::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use uuid::Uuid;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout, same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const JOBS: usize = 1_000_000;
const LIMIT_MIB: f64 = 500.0;

/// A million pending function jobs, spread over 1,000 leaves, fit in 500 MiB.
#[test]
fn a_million_pending_jobs_fit_in_500_mib() {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut rm = ResourceManager::new(Config::default(), Policies::default(), 3).expect("valid");
    for i in 0..1_000 {
        rm.create_queue(
            &format!("root.q{i}"),
            QueueConfig::with_capacity(0.1, 100.0),
        )
        .expect("valid queue");
    }
    let queues: Vec<String> = (0..1_000).map(|i| format!("root.q{i}")).collect();
    for j in 0..JOBS {
        let args = serde_json::json!({ "invoice": j });
        let mut req = SubmitRequest::function(
            JobId(Uuid::from_u128(j as u128 + 1)),
            &queues[j % queues.len()],
            "billing.invoice",
            args,
        );
        req.request = Some(Resources::cores(1, 256));
        rm.submit(req, Timestamp(1)).expect("accepted");
    }
    // What the shell would have taken and written away.
    drop(rm.take_effects());
    let used = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / (1024.0 * 1024.0);
    let per_job = used * 1024.0 * 1024.0 / JOBS as f64;
    eprintln!("{JOBS} pending jobs: {used:.0} MiB ({per_job:.0} bytes per job)");
    assert_eq!(rm.job_count(), JOBS);
    assert!(
        used <= LIMIT_MIB,
        "{used:.0} MiB for {JOBS} pending jobs (limit {LIMIT_MIB} MiB)"
    );
}
