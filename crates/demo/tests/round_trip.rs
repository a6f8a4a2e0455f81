//! The `formid-demo` binary as a person runs it (`cargo run -p formid-demo`):
//! the subscribe flow it runs itself, the legacy round trip it prints, and a
//! clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_formid-demo");

/// What the demo printed before it waits for requests: the gateway, the
/// fake, the key, and everything printed up to its last line.
struct Banner {
    gateway: String,
    metrics: String,
    fake: String,
    key: String,
    text: String,
}

/// Reads the demo's output until its last line ("Ctrl-C stops the demo.").
fn read_banner(stdout: std::process::ChildStdout) -> Banner {
    let mut gateway = None;
    let mut metrics = None;
    let mut fake = None;
    let mut key = None;
    let mut text = String::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("reading the demo's output");
        text.push_str(&line);
        text.push('\n');
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("gateway"), Some(url), None) => gateway = Some(url.to_owned()),
            (Some("metrics"), Some(url), None) => metrics = Some(url.to_owned()),
            (Some("fake"), Some("WeChat"), Some(url)) => fake = Some(url.to_owned()),
            (Some("API"), Some("key"), Some(value)) => key = Some(value.to_owned()),
            _ => {}
        }
        if line.starts_with("Ctrl-C stops the demo") {
            let (Some(gateway), Some(metrics), Some(fake), Some(key)) =
                (gateway, metrics, fake, key)
            else {
                panic!("the demo did not print its addresses and key:\n{text}");
            };
            // Keep reading: a closed pipe would kill the demo on its next write.
            std::thread::spawn(move || lines.for_each(drop));
            return Banner {
                gateway,
                metrics,
                fake,
                key,
                text,
            };
        }
    }
    panic!("the demo ended before printing its last line:\n{text}");
}

/// The answer line (`  → …`) of step `number` of the printed flow.
fn answer_of(text: &str, number: u32) -> &str {
    let block = text
        .split("\n# ")
        .find(|block| block.starts_with(&format!("{number}. ")))
        .unwrap_or_else(|| panic!("no step {number} in:\n{text}"));
    block
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("→ "))
        .unwrap_or_else(|| panic!("no answer in step {number}:\n{block}"))
}

#[tokio::test]
async fn the_demo_runs_a_full_round_trip_and_stops_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("formid-demo-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--fake-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}/demo.db", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the demo");
    let stdout = child.stdout.take().unwrap();
    let Banner {
        gateway,
        metrics,
        fake,
        key,
        text,
    } = tokio::task::spawn_blocking(move || read_banner(stdout))
        .await
        .unwrap();

    // The subscribe flow, run by the demo before its legacy lines: it comes first.
    let subscribe = text
        .find("== The subscribe flow")
        .expect("the subscribe flow is printed");
    let legacy = text
        .find("== The legacy formId flow")
        .expect("the legacy flow is printed");
    assert!(subscribe < legacy, "{text}");
    // The flow's events, as the demo's own receiver got and verified them.
    let hooks = text
        .find("== Webhooks")
        .expect("the webhook events are printed");
    assert!(subscribe < hooks && hooks < legacy, "{text}");
    let events = &text[hooks..legacy];
    for event in ["grant.accepted", "message.sent", "message.failed"] {
        assert!(
            events.contains(&format!("  {event} evt_")),
            "{event}: {events}"
        );
    }
    assert!(!events.contains("SIGNATURE WRONG"), "{events}");
    assert!(events.contains("(signature verified)"), "{events}");
    assert!(answer_of(&text, 1).starts_with("201 template "), "{text}");
    assert!(answer_of(&text, 2).contains(r#""one_time":1"#), "{text}");
    assert!(
        answer_of(&text, 3).starts_with("200 granted 1, replayed false"),
        "{text}"
    );
    assert!(
        answer_of(&text, 4).starts_with("200 granted 0, replayed true"),
        "{text}"
    );
    assert!(
        answer_of(&text, 5).starts_with("200 one-time grants of the template: 1,"),
        "{text}"
    );
    let sent = answer_of(&text, 6);
    assert!(
        sent.starts_with("200 sent, channel subscribe, credential subscribe, msgid "),
        "{text}"
    );
    let msgid = sent
        .split("msgid ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(msgid.parse::<u64>().is_ok_and(|id| id > 1 << 53), "{sent}");
    assert!(
        answer_of(&text, 7).starts_with("409 no_credential"),
        "{text}"
    );
    // The mini-program flow: no API key on the client, and a send spends
    // what it posted through /me.
    assert!(
        text.contains("== The mini-program with no API key"),
        "{text}"
    );
    assert!(
        answer_of(&text, 12).contains("\"session_token\":\"fgs_"),
        "{text}"
    );
    assert!(answer_of(&text, 13).contains("\"accepted\":1"), "{text}");
    assert!(answer_of(&text, 14).starts_with("granted 1"), "{text}");
    assert_eq!(answer_of(&text, 16), "\"sent\" and \"sent\"", "{text}");
    assert!(
        answer_of(&text, 8).starts_with("202 running, 3 recipient(s)"),
        "{text}"
    );
    assert!(
        answer_of(&text, 9).starts_with("200 finished, sent 3, no_credential 0, remaining 0"),
        "{text}"
    );

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

    // The demo's /metrics counted the sends, the requests by route, and not
    // on the API's own listener.
    let scraped = client.get(&metrics).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let scraped = scraped.text().await.unwrap();
    assert!(
        scraped.contains(r#"formid_sends_total{app="wxdemo0000000001",channel="template",outcome="sent",errcode="0"}"#),
        "{scraped}"
    );
    assert!(
        scraped.contains(r#"route="/v1/apps/{appid}/messages""#),
        "{scraped}"
    );
    assert!(!scraped.contains("o-demo-user-0001"), "{scraped}");
    let public = client
        .get(format!("{gateway}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);

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
