//! The line this crate keeps, held by the build's own records: nothing it
//! depends on, directly or not, can reach a database, the network, an async
//! runtime or randomness, and its code never reads the clock, the
//! environment or the file system. Time comes in as an argument.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Crates whose presence would mean I/O, an async runtime or hidden inputs.
const FORBIDDEN_CRATES: &[&str] = &[
    "sqlx",
    "sqlx-core",
    "libsqlite3-sys",
    "tokio",
    "mio",
    "actix-web",
    "actix-rt",
    "actix-http",
    "hyper",
    "reqwest",
    "futures",
    "futures-util",
    "async-trait",
    "rand",
    "getrandom",
    "uuid",
    "iana-time-zone",
];

/// Spellings that read the clock, the environment or the outside world.
const FORBIDDEN_CALLS: &[&str] = &[
    "Utc::now",
    "Local::now",
    "SystemTime",
    "Instant::now",
    "std::env",
    "std::fs",
    "std::net",
    "std::process",
    "thread::sleep",
];

/// The packages `formid-core` builds with on its own, as cargo resolves
/// them (features included: a crate pulled in only by another workspace
/// member's features does not count).
fn resolved_dependencies() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "formid-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_core_depends_on_nothing_that_does_io_or_runs_tasks() {
    let reached = resolved_dependencies();
    assert!(
        reached.contains("serde"),
        "cargo tree was read: {reached:?}"
    );
    let forbidden: Vec<_> = FORBIDDEN_CRATES
        .iter()
        .filter(|name| reached.contains(**name))
        .collect();
    assert!(forbidden.is_empty(), "formid-core reaches {forbidden:?}");
}

#[test]
fn the_core_never_reads_the_clock_or_the_outside_world() {
    fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the core's sources") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file");
        for call in FORBIDDEN_CALLS {
            assert!(!text.contains(call), "{} uses {call}", file.display());
        }
    }
}

#[test]
fn the_core_builds_chrono_without_its_clock() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("the core's manifest");
    let chrono = manifest
        .lines()
        .find(|line| line.starts_with("chrono"))
        .expect("chrono is a dependency");
    assert!(chrono.contains("default-features = false"), "{chrono}");
    assert!(!chrono.contains("clock"), "{chrono}");
}
