//! The `formid-gateway` binary as a person runs it: a refusal to start on a
//! bad configuration. (The demo's round trip is tested in `crates/demo`.)

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_formid-gateway");

#[test]
fn a_bad_configuration_stops_the_process_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("formid-config-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "[apps.wx0123456789abcdef]\nsecret = \"s\"\n[api_keys.a]\nkey = \"0123456789abcdef0123\"\napps = [\"*\"]\nscopes = [\"admin\"]\n",
    )
    .unwrap();
    // The environment wins over the file.
    let output = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&file)
        .env("FORMID__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen"), "{stderr}");
    assert!(
        !stderr.contains("0123456789abcdef0123"),
        "the key must not be printed"
    );

    let missing = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(dir.join("absent.toml"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let _ = std::fs::remove_dir_all(dir);
}
