//! CI's short fuzz run: every target replays its committed regressions (inputs that once
//! broke a property) and seed corpus, then runs structured random inputs from
//! deterministic seeds. A failure names the target and the seed (or the file), which
//! reproduce it.
//!
//! Settings: `LQSM_FUZZ_INPUTS` random inputs per target (default below, a few seconds
//! each in a debug build), `LQSM_FUZZ_SEED` the first seed (default fixed, so CI runs
//! the same inputs every time; set it to explore others).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use lqsm_fuzz::{Target, random_input};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Random inputs per target when `LQSM_FUZZ_INPUTS` is not set: 10 to 20 s per target in
/// a debug build on a loaded two-core machine (measured 2026-12-01: 1.7 s, 1.4 s and 13 s
/// per thousand), the three running side by side.
fn default_inputs(target: Target) -> u64 {
    match target {
        Target::ApiRequest => 6_000,
        Target::ApiTypes => 8_000,
        Target::CoreCommands => 1_500,
    }
}

const DEFAULT_SEED: u64 = 0x1c5a_0011;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim().replace('_', "");
    Some(
        match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        }
        .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
    )
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

/// Runs one input; on a failure, the panic's message with `what` (the file or seed).
fn run_one(target: Target, input: &[u8], what: &str) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| target.run(input))).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        format!("{} failed on {what}: {message}", target.name())
    })
}

fn replay(target: Target) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for kind in ["regressions", "corpus"] {
        for file in files_under(&root.join(kind).join(target.name())) {
            let input = std::fs::read(&file).unwrap();
            if let Err(failure) = run_one(target, &input, &file.display().to_string()) {
                panic!("{failure}");
            }
            count += 1;
        }
    }
    count
}

fn random_run(target: Target) {
    let inputs = env_u64("LQSM_FUZZ_INPUTS").unwrap_or_else(|| default_inputs(target));
    let first = env_u64("LQSM_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    for seed in first..first.saturating_add(inputs) {
        let input = random_input(target, seed);
        if let Err(failure) = run_one(target, &input, &format!("seed {seed:#x}")) {
            // Kept as a file: the input to minimise and commit under regressions/.
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            let file = dir.join(format!("{}-{seed:#x}", target.name()));
            let saved = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, &input))
                .map_or_else(
                    |e| format!("not saved: {e}"),
                    |()| file.display().to_string(),
                );
            panic!(
                "{failure}\nreproduce: LQSM_FUZZ_SEED={seed:#x} LQSM_FUZZ_INPUTS=1 cargo test -p lqsm-fuzz --test fuzz {}\ninput ({} bytes): {saved}",
                target.name(),
                input.len(),
            );
        }
    }
}

/// With `LQSM_FUZZ_REPLAY=DIR` (an AFL++ output directory, as `fuzz/run-long.sh` leaves
/// it), replays every crash AFL++ saved for the target and fails listing those that
/// still break a property: how a fix is checked against all a long run found.
fn replay_afl_crashes(target: Target) {
    let Some(dir) = std::env::var_os("LQSM_FUZZ_REPLAY") else {
        return;
    };
    let crashes = Path::new(&dir)
        .join(target.name())
        .join("default")
        .join("crashes");
    let files: Vec<PathBuf> = files_under(&crashes)
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "README.txt"))
        .collect();
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| run_one(target, &std::fs::read(f).unwrap(), &f.display().to_string()).err())
        .collect();
    eprintln!(
        "{}: replayed {} crashes of {}, {} still fail",
        target.name(),
        files.len(),
        crashes.display(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn short_run(target: Target) {
    replay_afl_crashes(target);
    let replayed = replay(target);
    eprintln!("{}: replayed {replayed} committed inputs", target.name());
    random_run(target);
}

/// HTTP requests through the real router: no panic, no 500, every refusal structured and
/// naming the field at fault.
#[test]
fn api_request() {
    short_run(Target::ApiRequest);
}

/// Bodies decoded as the wire types: refusals structured, accepted bodies read back equal.
#[test]
fn api_types() {
    short_run(Target::ApiTypes);
}

/// Command sequences on the core: no panic, consistent after every command.
#[test]
fn core_commands() {
    short_run(Target::CoreCommands);
}

/// The corpus the coverage-guided runs start from is committed for every target, so the
/// replay above is never an empty loop.
#[test]
fn every_target_has_a_committed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in Target::ALL {
        let corpus = files_under(&root.join("corpus").join(target.name()));
        assert!(!corpus.is_empty(), "no corpus for {}", target.name());
    }
}
