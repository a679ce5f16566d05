//! Writes structured random inputs, the same the CI run makes, as a starting corpus for
//! AFL++: `make_corpus TARGET DIR COUNT [FIRST_SEED]`.

use lqsm_fuzz::{Target, random_input};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = args
        .first()
        .and_then(|name| Target::ALL.into_iter().find(|t| t.name() == name));
    let (Some(target), Some(dir), Some(Ok(count))) = (
        target,
        args.get(1).map(PathBuf::from),
        args.get(2).map(|c| c.parse::<u64>()),
    ) else {
        eprintln!("usage: make_corpus api_request|api_types|core_commands DIR COUNT [FIRST_SEED]");
        return ExitCode::FAILURE;
    };
    let first = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for seed in first..first + count {
        let path = dir.join(format!("gen-{seed}"));
        if let Err(e) = std::fs::write(&path, random_input(target, seed)) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
