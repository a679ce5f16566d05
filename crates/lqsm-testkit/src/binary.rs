//! Finding the `lqsm` binary: one way for every crate's tests, and never a stale one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The `lqsm` binary that `cargo build -p lqsm-cli` built into this test's target
/// directory and profile (`<target>/<profile>/lqsm`, next to `deps/` holding the test
/// executable). `LQSM_TEST_BIN` overrides the lookup (and the age check).
///
/// Panics, saying what to run, when it is missing, or when a source file it was built
/// from (cargo's `lqsm.d` beside it lists them; without that file, every `.rs` file
/// under a crate's `src/`) changed after it was built: the test would run old code.
pub fn lqsm_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(locate_binary).clone()
}

fn locate_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LQSM_TEST_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "LQSM_TEST_BIN names {}, which is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // <target>/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in <target>/<profile>/deps");
    let bin = profile_dir.join(format!("lqsm{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "the lqsm binary {} does not exist: run `cargo build -p lqsm-cli` first (same \
                 CARGO_TARGET_DIR and profile; `cargo test --workspace` builds it), or set \
                 LQSM_TEST_BIN",
                bin.display()
            )
        });
    let sources = match std::fs::read_to_string(profile_dir.join("lqsm.d")) {
        Ok(dep_info) => dep_info_sources(&dep_info),
        Err(_) => workspace_sources(),
    };
    if let Some((_, newer)) = newest(sources).filter(|(t, _)| *t > built) {
        panic!(
            "the lqsm binary {} is older than {}: run `cargo build -p lqsm-cli` (or \
             `cargo test --workspace`) so the tests run today's code",
            bin.display(),
            newer.display()
        );
    }
    bin
}

/// The files a cargo dep-info file (`target: source source ...`, spaces in a path
/// escaped as `\ `) names as the sources of its target. Relative paths are taken from
/// the workspace root.
fn dep_info_sources(dep_info: &str) -> Vec<PathBuf> {
    let root = workspace_root();
    let Some(line) = dep_info.lines().next() else {
        return Vec::new();
    };
    // The target's own path ends at the first unescaped `: `.
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = line.chars().peekable();
    let mut in_target = true;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|n| *n == ' ' || *n == '\\') => {
                current.push(chars.next().expect("peeked"));
            }
            ':' if in_target && chars.peek() == Some(&' ') => {
                in_target = false;
                current.clear();
            }
            ' ' => {
                if !in_target && !current.is_empty() {
                    sources.push(root.join(&current));
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !in_target && !current.is_empty() {
        sources.push(root.join(&current));
    }
    sources
}

/// Every `.rs` file under the `src/` of every crate of the workspace but this one (a
/// changed test, example or benchmark does not make the binary stale).
fn workspace_sources() -> Vec<PathBuf> {
    let crates = workspace_root().join("crates");
    let mut stack: Vec<PathBuf> = std::fs::read_dir(crates)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|krate| krate.file_name() != "lqsm-testkit")
        .map(|krate| krate.path().join("src"))
        .collect();
    let mut sources = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    sources
}

/// The most recently changed of `paths` (those that exist).
fn newest(paths: Vec<PathBuf>) -> Option<(SystemTime, PathBuf)> {
    paths
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the testkit lives in <workspace>/crates/lqsm-testkit")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_names_every_source_with_escaped_spaces_kept() {
        let root = workspace_root();
        let sources = dep_info_sources(
            "/t/debug/lqsm: /w/crates/a/src/lib.rs /w/my\\ dir/b.rs crates/c/src/main.rs\n\n\
             /w/crates/a/src/lib.rs:\n",
        );
        assert_eq!(
            sources,
            vec![
                PathBuf::from("/w/crates/a/src/lib.rs"),
                PathBuf::from("/w/my dir/b.rs"),
                root.join("crates/c/src/main.rs"),
            ]
        );
    }

    #[test]
    fn without_dep_info_every_crate_source_but_the_testkits_counts() {
        let sources = workspace_sources();
        assert!(
            sources
                .iter()
                .any(|p| p.ends_with("crates/lqsm-cli/src/main.rs")),
            "{sources:?}"
        );
        assert!(
            !sources
                .iter()
                .any(|p| p.components().any(|c| c.as_os_str() == "lqsm-testkit")),
            "{sources:?}"
        );
    }
}
