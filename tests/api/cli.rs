//! The `formid-gateway` binary as a person runs it: the demo round trip, a
//! clean exit on SIGTERM, and a refusal to start on a bad configuration.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_formid-gateway");

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
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--fake-listen",
            "127.0.0.1:0",
        ])
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

/// A gateway process on a fresh SQLite file, its stderr collected.
fn start_gateway(dir: &std::path::Path, env: &[(&str, &str)]) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = \"sqlite://{}/ledger.db\"\n[apps.wx0123456789abcdef]\nsecret = \"s\"\n\
             [api_keys.a]\nkey = \"0123456789abcdef0123\"\napps = [\"*\"]\nscopes = [\"admin\"]\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--config"])
        .arg(&file)
        .env("FORMID__LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    (command.spawn().unwrap(), format!("127.0.0.1:{port}"))
}

// Anyone who reaches the port can send garbage: that must not write an
// ERROR line per connection (it is counted, and reported at most once a
// minute at WARN), and the service keeps serving.
#[tokio::test]
async fn garbage_on_the_socket_writes_no_error_lines() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir =
        std::env::temp_dir().join(format!("formid-garbage-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, address) = start_gateway(&dir, &[]);
    let stderr = child.stderr.take().unwrap();
    let collected = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("http://{address}/readyz"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let garbage: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"POST /v1/apps/x/credentials HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for _ in 0..4 {
        for bytes in garbage {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            let _ = stream.write_all(bytes).await;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        }
    }
    let health = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();
    let stderr = collected.join().unwrap();
    assert!(stderr.contains("listening"), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

// Misspelt settings stop the process, naming the setting and the nearest
// valid one; numeric-looking secrets reach the service byte for byte.
#[test]
fn misspelt_settings_stop_the_process_with_a_suggestion() {
    let dir = std::env::temp_dir().join(format!("formid-typo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for (variable, mentioned) in [
        ("FORMID__DATABSE_URL", "`database_url`"),
        ("FORMID__LEDGER__MAX_BACTH", "`ledger.max_batch`"),
    ] {
        let (child, _) = start_gateway(&dir, &[(variable, "5")]);
        let output = child.wait_with_output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{stderr}");
        assert!(stderr.contains(mentioned), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
