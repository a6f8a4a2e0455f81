//! The `formid-demo` binary as a person runs it (`cargo run -p formid-demo`):
//! the round trip its banner prints, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_formid-demo");

/// Reads the demo's banner until the lines the round trip needs.
fn read_banner(stdout: std::process::ChildStdout) -> (String, String, String) {
    let mut gateway = None;
    let mut fake = None;
    let mut key = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("reading the demo's output");
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("gateway"), Some(url), None) => gateway = Some(url.to_owned()),
            (Some("fake"), Some("WeChat"), Some(url)) => fake = Some(url.to_owned()),
            (Some("API"), Some("key"), Some(value)) => key = Some(value.to_owned()),
            _ => {}
        }
        if let (Some(gateway), Some(fake), Some(key)) = (&gateway, &fake, &key) {
            // Keep reading: a closed pipe would kill the demo on its next write.
            std::thread::spawn(move || lines.for_each(drop));
            return (gateway.clone(), fake.clone(), key.clone());
        }
    }
    panic!("the demo ended before printing its addresses and key");
}

#[tokio::test]
async fn the_demo_runs_a_full_round_trip_and_stops_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("formid-demo-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--fake-listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}/demo.db", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the demo");
    let stdout = child.stdout.take().unwrap();
    let (gateway, fake, key) = tokio::task::spawn_blocking(move || read_banner(stdout))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let app = format!("{gateway}/v1/apps/wxdemo0000000001");

    let minted: Value = client
        .post(format!(
            "{fake}/fake/apps/wxdemo0000000001/users/o-demo-user-0001/form_id"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let form_id = minted["form_id"].as_str().unwrap();
    let collected = client
        .post(format!("{app}/credentials"))
        .bearer_auth(&key)
        .json(&json!({"openid": "o-demo-user-0001", "kind": "form_id", "value": form_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(collected.status(), 200);
    let quota: Value = client
        .get(format!("{app}/users/o-demo-user-0001/quota"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(quota["sends_available"], 1);
    let sent = client
        .post(format!("{app}/messages"))
        .bearer_auth(&key)
        .json(
            &json!({"touser": "o-demo-user-0001", "template_id": "order-shipped-demo-template",
                      "data": {"keyword1": {"value": "Order 1024"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let again = client
        .post(format!("{app}/messages"))
        .bearer_auth(&key)
        .json(&json!({"touser": "o-demo-user-0001", "template_id": "order-shipped-demo-template"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // SIGTERM: stop taking requests, finish, exit 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(dir);
}
