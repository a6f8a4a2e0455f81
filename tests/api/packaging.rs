//! What ships: the production binary does not contain the fake WeChat.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
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
