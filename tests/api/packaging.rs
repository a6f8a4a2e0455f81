//! What ships: the production binary does not contain the fake WeChat, and the
//! Docker image builds from exactly the files its Dockerfile copies.
//!
//! No Docker engine runs where the suite runs, so the Docker test does what
//! the build stage does up to `cargo build`: it copies exactly the paths the
//! build stage's `COPY` lines name into an empty directory and has cargo load
//! the workspace there (`cargo metadata --locked`), then checks that every
//! file the gateway's build reads (each member's targets, the migrations the
//! gateway embeds) is there. A full `cargo build --release` per test run would
//! cost minutes of this machine's two cores.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_formid-gateway");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The cargo running this suite (cargo sets `CARGO` for the tests it runs).
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo metadata --locked --format-version 1` of the workspace at `dir`.
fn metadata(dir: &Path) -> Result<Value, String> {
    let output = cargo()
        .args(["metadata", "--locked", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .expect("running cargo metadata");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON"))
}

fn package_id(metadata: &Value, name: &str) -> String {
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no package {name}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every package `root` links when built as a program: its normal and build
/// dependencies, transitively (dev-dependencies only reach its tests).
fn linked_packages(metadata: &Value, root: &str) -> BTreeSet<String> {
    let names: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([package_id(metadata, root)]);
    while let Some(id) = queue.pop_front() {
        for dep in nodes[id.as_str()]["deps"].as_array().unwrap() {
            let not_dev_only = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"] != "dev");
            let dep_id = dep["pkg"].as_str().unwrap();
            if not_dev_only && seen.insert(names[dep_id].to_owned()) {
                queue.push_back(dep_id.to_owned());
            }
        }
    }
    seen
}

#[test]
fn the_production_build_does_not_link_the_fake_wechat() {
    let metadata = metadata(Path::new(ROOT)).unwrap_or_else(|e| panic!("{e}"));
    let linked = linked_packages(&metadata, "formid-gateway");
    // The walk does reach the gateway's real dependencies…
    assert!(
        linked.contains("actix-web") && linked.contains("sqlx"),
        "{linked:?}"
    );
    assert!(!linked.contains("fake-wechat"), "{linked:?}");
    assert!(!linked.contains("formid-demo"), "{linked:?}");
    // …and the fake is a dependency of the gateway's tests only, while the
    // demo, a program of its own, links both.
    let gateway_manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "formid-gateway")
        .unwrap();
    let fake = gateway_manifest["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "fake-wechat")
        .expect("the gateway's tests use the fake");
    assert_eq!(fake["kind"], "dev");
    let demo = linked_packages(&metadata, "formid-demo");
    assert!(demo.contains("fake-wechat") && demo.contains("formid-gateway"));
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &str) -> bool {
    memchr::memmem::find(haystack, needle.as_bytes()).is_some()
}

#[test]
fn the_production_binary_holds_no_trace_of_the_fake_wechat() {
    let fake_source: String = std::fs::read_dir(Path::new(ROOT).join("crates/fake-wechat/src"))
        .expect("listing the fake's sources")
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    // Strings only the fake has: its helper route, the proxy signature of its
    // HTML error pages, and its type names (in the debug info of a test build).
    let fake_only = ["/fake/sends", "stgw", "FakeWeChatServer"];
    for needle in fake_only {
        assert!(
            fake_source.contains(needle),
            "{needle} is no longer the fake's"
        );
    }
    let binary = std::fs::read(BINARY).expect("reading the gateway binary");
    // The search finds what the gateway does contain.
    assert!(contains(&binary, "/access_token/refresh"));
    assert!(contains(&binary, "formid_gateway"));
    for needle in fake_only {
        assert!(
            !contains(&binary, needle),
            "the gateway binary contains {needle:?}"
        );
    }
}

/// The build stage's `COPY` instructions, as (sources, destination relative
/// to the build stage's `WORKDIR`).
fn build_stage_copies(dockerfile: &str) -> Vec<(Vec<String>, String)> {
    let mut copies = Vec::new();
    let mut workdir = None;
    let mut stages = 0;
    for line in dockerfile.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "continued lines are not parsed here: {line}"
        );
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match instruction.to_ascii_uppercase().as_str() {
            "FROM" => {
                stages += 1;
                if stages > 1 {
                    break;
                }
            }
            "WORKDIR" => workdir = Some(rest.trim().to_owned()),
            "ADD" => panic!("ADD is not parsed here: {line}"),
            "COPY" => {
                assert!(
                    !rest.trim_start().starts_with('['),
                    "JSON-form COPY is not parsed here"
                );
                let mut words: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
                assert!(
                    words.iter().all(|w| !w.starts_with("--")),
                    "COPY flags are not parsed here: {line}"
                );
                let destination = words.pop().expect("COPY names a destination");
                let workdir = workdir.as_deref().expect("WORKDIR before COPY");
                let destination = match destination.strip_prefix('/') {
                    Some(absolute) => Path::new(absolute)
                        .strip_prefix(workdir.trim_start_matches('/'))
                        .expect("COPY into the WORKDIR")
                        .to_string_lossy()
                        .into_owned(),
                    None => destination,
                };
                copies.push((words, destination));
            }
            _ => {}
        }
    }
    copies
}

/// The paths of `.dockerignore` (plain paths only, which is all it holds).
fn docker_ignored(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(root.join(".dockerignore")).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert!(
                !l.contains(['*', '?', '!', '[']),
                "patterns are not parsed here: {l}"
            );
            PathBuf::from(l.trim_matches('/'))
        })
        .collect()
}

/// Copies `from` (a file or a directory, relative to `context`) to `to`,
/// leaving out what `.dockerignore` names.
fn copy_tree(context: &Path, from: &Path, to: &Path, ignored: &[PathBuf]) {
    if ignored.iter().any(|i| from.starts_with(i)) {
        return;
    }
    let source = context.join(from);
    if source.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let name = entry.unwrap().file_name();
            copy_tree(context, &from.join(&name), &to.join(&name), ignored);
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&source, to).unwrap_or_else(|e| panic!("COPY {}: {e}", from.display()));
    }
}

/// A directory holding exactly what the Dockerfile's build stage copies.
fn docker_build_context(dockerfile: &str) -> PathBuf {
    let context = Path::new(ROOT);
    let ignored = docker_ignored(context);
    let dir = std::env::temp_dir().join(format!("formid-docker-{}", uuid::Uuid::new_v4().simple()));
    for (sources, destination) in build_stage_copies(dockerfile) {
        let into_directory = sources.len() > 1 || destination.ends_with('/');
        for source in sources {
            let from = Path::new(source.trim_start_matches("./"));
            // Docker copies a directory's contents into the destination, and
            // a file into it when it is a directory ("x/", or several sources).
            let to = if !context.join(from).is_dir() && into_directory {
                dir.join(&destination).join(from.file_name().unwrap())
            } else {
                dir.join(&destination)
            };
            copy_tree(context, from, &to, &ignored);
        }
    }
    dir
}

#[test]
fn the_docker_build_stage_has_every_file_the_gateway_build_reads() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let dir = docker_build_context(&dockerfile);
    let metadata = metadata(&dir).unwrap_or_else(|e| panic!("cargo metadata in the image: {e}"));

    // Cargo finds every member's targets (it needs them to build any one).
    for package in metadata["packages"].as_array().unwrap() {
        if package["source"].is_null() {
            for target in package["targets"].as_array().unwrap() {
                let path = Path::new(target["src_path"].as_str().unwrap());
                assert!(path.exists(), "{} is not copied", path.display());
            }
        }
    }
    // The migrations the gateway embeds at compile time (sqlx::migrate!).
    // docker compose builds this Dockerfile from the same context.
    let compose = std::fs::read_to_string(Path::new(ROOT).join("docker-compose.yml")).unwrap();
    assert!(compose.contains("    build: .\n"), "{compose}");
    let mut migrations = 0;
    let mut sources = vec![dir.join("src")];
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            sources.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (_, rest) in text
            .match_indices("migrate!(\"")
            .map(|(i, _)| text.split_at(i + 10))
        {
            let embedded = dir.join(&rest[..rest.find('"').unwrap()]);
            assert!(
                std::fs::read_dir(&embedded).is_ok_and(|mut d| d.next().is_some()),
                "{} is not copied",
                embedded.display()
            );
            migrations += 1;
        }
    }
    assert!(migrations >= 2, "found {migrations} migrate! calls");
    // The build stage builds the binary the image then takes.
    assert!(dockerfile.contains("cargo build --release --locked -p formid-gateway"));
    assert!(dockerfile.contains("COPY --from=build /src/target/release/formid-gateway "));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_docker_test_catches_a_workspace_member_left_out() {
    // The Dockerfile before the workspace had members other than the root.
    let dockerfile = "FROM rust:1-bookworm AS build\nWORKDIR /src\n\
                      COPY Cargo.toml Cargo.lock ./\nCOPY src src\nCOPY migrations migrations\n\
                      RUN cargo build --release --locked\nFROM debian:bookworm-slim\nCOPY crates crates\n";
    let dir = docker_build_context(dockerfile);
    assert!(dir.join("src/lib.rs").exists() && dir.join("migrations").is_dir());
    assert!(
        !dir.join("crates").exists(),
        "the second stage's COPY is not the build's"
    );
    let error = metadata(&dir).expect_err("cargo cannot load a workspace without its members");
    assert!(
        error.contains("bench") || error.contains("crates/"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
