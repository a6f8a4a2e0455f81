//! The `formid-gateway` binary as a person runs it: a refusal to start on a
//! bad configuration or a misspelt setting, and quiet logs when garbage
//! arrives on the socket. (The demo's round trip is tested in `crates/demo`.)

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// `--version` names the binary and the crate's version, and starts nothing.
#[test]
fn version_prints_the_crate_version() {
    let output = Command::new(BINARY).arg("--version").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        format!("formid-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `log_format = "json"`: the process's lines are JSON objects from the
/// first one on; a misspelt format stops the process, naming the setting.
#[tokio::test]
async fn json_logs_from_the_first_line() {
    let dir = std::env::temp_dir().join(format!("formid-json-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, address) = start_gateway(&dir, &[("FORMID__LOG_FORMAT", "json")]);
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let last = line.contains("formid-gateway listening");
            lines.push(line);
            if last {
                break;
            }
        }
        lines
    });
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://{address}/readyz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap();
    assert!(
        lines.last().is_some_and(|line| line.contains("listening")),
        "{lines:?}"
    );
    for line in &lines {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(parsed["timestamp"].is_string(), "{line}");
    }

    let (child, _) = start_gateway(&dir, &[("FORMID__LOG_FORMAT", "yaml")]);
    let refused = child.wait_with_output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("log_format"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
